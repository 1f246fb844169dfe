"""Dataset plugins: ``digits`` (offline, bundled with scikit-learn), ``imagefolder``, ``cifar10``, ``cifar100``."""

from .digits import Digits
from .vision import Cifar10, Cifar100, ImageFolder

__all__ = ["Digits", "ImageFolder", "Cifar10", "Cifar100"]
