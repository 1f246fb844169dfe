"""Students: small trainable models with the same call convention as the teachers.

``vit_small`` (any backbone: DINOv2 ViT-S initialisation by default, or scratch, MLP or linear-seg head as the teachers),
``resnet50`` (torchvision, from scratch), ``deeplabv3_resnet50`` (torchvision, from scratch) and
``timm`` (any timm model by name). Every student has ``prepare(images01)``, ``forward`` -> logits and
``features`` -> the representation used by the PCA plots.
"""

from __future__ import annotations

import torch
from torch import nn

from fulcra.backbone import backbone_key, create_backbone
from fulcra.errors import ConfigError, FormatError, MissingDependencyError
from fulcra.weights import load_state_dict_file

from ._common import InputSpec, check_task
from .heads import ClassificationHead, LinearSegHead, cls_features, hidden_size

__all__ = ["VitStudent", "ResNetStudent", "DeepLabStudent", "TimmStudent"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _torchvision():
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "this student needs torchvision: pip install 'fulcra[vision]'", extra="vision"
        ) from exc
    return torchvision


class VitStudent(nn.Module, InputSpec):
    """A student on any backbone (DINOv2 ViT-S by default) with the thesis' heads, trained end to end.

    Args:
        backbone: a ``fulcra.backbones`` plugin name (``dinov2_vits14``, ``dinov2_vits14_reg``,
            ``eva02_vits14``, a third party's) or a node with its own keys
            (``{name: timm, arch: vit_small_patch16_224}``).
        weights: initial weights file (``None``: the user's caches when ``pretrained``).
        pretrained: start from pretrained weights (DINOv2 init) or from scratch.
        tiny: a tiny model of the family (tests, offline demos); loads ``weights`` if given.
        num_classes: classes (set by the workflow).
        task: ``classification`` (MLP head on CLS tokens) or ``segmentation`` (linear head on patches).
        head, n_cls, avgpool, hidden: as for the ``probed`` teacher (app. B.1.4).
        image_size: input side (multiple of the patch size).
    """

    conformance_params = {"tiny": True, "pretrained": False, "image_size": 28}

    def __init__(
        self,
        backbone: str | dict = "dinov2_vits14",
        weights: str | None = None,
        pretrained: bool = True,
        tiny: bool = False,
        num_classes: int = 10,
        task: str = "classification",
        head: str = "mlp",
        n_cls: int = 3,
        avgpool: bool = False,
        hidden: str = "auto",
        image_size: int = 224,
    ):
        super().__init__()
        self.task = check_task("students plugin 'vit_small'", task)
        self.backbone = create_backbone(
            backbone,
            weights=weights if pretrained else None,
            tiny=tiny,
            pretrained=pretrained,
            owner="students plugin 'vit_small'",
        )
        if image_size % self.backbone.patch_size:
            raise ConfigError(
                f"students plugin 'vit_small': image_size {image_size} is not a multiple of {self.backbone.patch_size}"
            )
        self.image_size, self.num_classes = int(image_size), int(num_classes)
        d = int(self.backbone.embed_dim)
        if self.task == "segmentation":
            self.n_cls, self.avgpool = 1, False
            self.head = LinearSegHead(d, num_classes)
        else:
            depth = getattr(self.backbone, "depth", None)
            if n_cls < 1 or (depth is not None and n_cls > depth):
                raise ConfigError(
                    f"students plugin 'vit_small': n_cls={n_cls} outside 1..{depth} (blocks of backbone '{backbone_key(backbone)}')"
                )
            self.n_cls, self.avgpool = int(n_cls), bool(avgpool)
            n_in = d * (self.n_cls + int(self.avgpool))
            self.head = ClassificationHead(n_in, num_classes, head, hidden_size(n_in, num_classes, d, hidden))

    def normalize_resized(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.normalize(images)

    def _fit(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs not made by ``prepare``: resize to the nearest multiple of the patch size."""
        p = self.backbone.patch_size
        H, W = images.shape[-2:]
        if H % p or W % p:
            size = (max(p, round(H / p) * p), max(p, round(W / p) * p))
            images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tok = self.backbone.forward_tokens(self._fit(images), n_last=self.n_cls)
        if self.task == "segmentation":
            return self.head(tok["patch"], size=tuple(images.shape[-2:]))  # dense logits at input size
        return self.head(cls_features(tok, self.avgpool))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        tok = self.backbone.forward_tokens(self._fit(images))
        return tok["patch"] if self.task == "segmentation" else tok["cls"][-1]


class ResNetStudent(nn.Module, InputSpec):
    """A torchvision ResNet trained from scratch (ResNet-50 in the thesis).

    Args:
        num_classes: classes (set by the workflow).
        arch: torchvision ResNet name (``resnet50``; ``resnet18`` for quick runs).
        small_input: CIFAR-style stem (3×3 conv, no max-pool) for images under ~64 px.
        image_size: resize inputs to this side (``None`` keeps the dataset size).
    """

    task = "classification"

    def __init__(
        self, num_classes: int = 10, arch: str = "resnet50", small_input: bool = False, image_size: int | None = None
    ):
        super().__init__()
        tv = _torchvision()
        if not arch.startswith("resnet") or not hasattr(tv.models, arch):
            raise ConfigError(f"students plugin 'resnet50': arch must be a torchvision ResNet, got {arch!r}")
        self.net = getattr(tv.models, arch)(weights=None, num_classes=num_classes)
        if small_input:
            self.net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.net.maxpool = nn.Identity()
        self.mean, self.std = IMAGENET
        self.image_size, self.num_classes = image_size, int(num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(images))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.fc(self.features(images))


class DeepLabStudent(nn.Module, InputSpec):
    """torchvision DeepLabv3 with a ResNet-50 backbone, from scratch (thesis Table 4.3).

    Args:
        num_classes: segmentation classes. image_size: resize inputs (``None`` keeps them).
    Call: ``[B, 3, H, W]`` -> ``[B, num_classes, H, W]``.
    """

    task = "segmentation"

    def __init__(self, num_classes: int = 21, image_size: int | None = None):
        super().__init__()
        tv = _torchvision()
        self.net = tv.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )
        self.mean, self.std = IMAGENET
        self.image_size, self.num_classes = image_size, int(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)["out"]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.backbone(images)["out"]


class TimmStudent(nn.Module, InputSpec):
    """Any timm classification model by name, from scratch or from a local weight file.

    Args:
        model: timm model name (``timm.list_models()``), e.g. ``resnet18``, ``vit_tiny_patch16_224``.
        num_classes: classes. weights: optional local state dict (never downloaded).
        image_size: resize inputs to this side (``None`` keeps them). model_kwargs: extra
            ``timm.create_model`` keywords (e.g. ``{img_size: 32}``).
    """

    task = "classification"

    def __init__(
        self,
        model: str = "resnet18",
        num_classes: int = 10,
        weights: str | None = None,
        image_size: int | None = None,
        model_kwargs: dict | None = None,
    ):
        super().__init__()
        try:
            import timm
        except ImportError as exc:
            raise MissingDependencyError(
                "students plugin 'timm' needs timm: pip install 'fulcra[timm]'", extra="timm"
            ) from exc
        if model not in timm.list_models():
            import difflib

            close = difflib.get_close_matches(model, timm.list_models(), n=3)
            raise ConfigError(
                f"students plugin 'timm': unknown timm model {model!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "")
            )
        self.net = timm.create_model(model, pretrained=False, num_classes=num_classes, **dict(model_kwargs or {}))
        if weights:
            own = self.net.state_dict()
            head = {k for k in own if k.startswith(self.net.default_cfg.get("classifier", "fc"))}
            # the classifier is re-initialised for the task: skip it when its shape differs
            sd = {
                k: v
                for k, v in load_state_dict_file(weights).items()
                if not (k in head and (k not in own or own[k].shape != v.shape))
            }
            missing, unexpected = self.net.load_state_dict(sd, strict=False)
            missing = [k for k in missing if k not in head]
            if missing or unexpected:
                raise FormatError(
                    f"{weights}: does not fit timm model {model!r} ({len(missing)} missing, {len(unexpected)} unexpected keys)"
                )
        cfg = getattr(self.net, "pretrained_cfg", {}) or {}
        self.mean, self.std = tuple(cfg.get("mean", IMAGENET[0])), tuple(cfg.get("std", IMAGENET[1]))
        self.image_size, self.num_classes = image_size, int(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(images), pre_logits=True)
