"""Refiners: improve per-primitive scores with 3D geometry and feature similarity.

Workflows build them by name (``fulcra.create("refiners", NAME, ...)``) and call only ``refine``.
"""

from .graph_diffusion import DiffusionResult, GraphDiffusion

__all__ = ["GraphDiffusion", "DiffusionResult"]
