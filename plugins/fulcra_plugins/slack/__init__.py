"""SLACK: policy optimizers (``slack`` and the search-free baselines), the paper's networks as
``students``, and the ``search`` workflow."""

from .baselines import RandAugment, TrivialAugment, UniformPolicy
from .models import ResNet18, SmallCNN, Wrn402, Wrn2810
from .slack import Slack

__all__ = ["Slack", "UniformPolicy", "TrivialAugment", "RandAugment", "SmallCNN", "Wrn402", "Wrn2810", "ResNet18"]
