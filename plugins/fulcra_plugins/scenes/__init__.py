"""Gaussian Splatting scenes: formats (PLY, cameras), the ``torch`` and ``gsplat`` backends,
the embedded synthetic scene, PCA visualisation and pruning (thesis ch. 5, app. C)."""
