"""The ``graph_diffusion`` refiner (LUDVIG §5.3.3, app. C.1.3-C.1.4): a kNN graph of the Gaussian
centres weighted by feature similarity, a unary term, and power iterations.

The public names are :class:`GraphDiffusion` (the plugin) and :class:`DiffusionResult` (what
:meth:`GraphDiffusion.run` returns besides the scores); ``_graph``, ``_diffusion`` and ``_unary``
are its private modules.
"""

from .refiner import DiffusionResult, GraphDiffusion

__all__ = ["GraphDiffusion", "DiffusionResult"]
