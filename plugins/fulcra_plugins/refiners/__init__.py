"""Refiners: improve per-primitive scores with 3D geometry and feature similarity."""

from .graph_diffusion import DiffusionResult, GraphDiffusion

__all__ = ["GraphDiffusion", "DiffusionResult"]
