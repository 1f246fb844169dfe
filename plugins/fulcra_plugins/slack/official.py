"""The policies published with the official SLACK code, read into fulcra's ``policy.json`` format.

The official search saves ``models.ckpt`` with ``torch.save(dict(step=..., time=...,
outer_model=SLACK.state_dict(), outer_optimizer=...))``; the published policies are such files
(``slack/checkpoints/{cifar,imagenet100,domainnet}/models/*.ckpt``). The augmentation model's state
holds two tensors:

* ``pi`` ``[K, N]``: the logits of the K = 3 categorical distributions (``softmax(pi)`` are the
  stage probabilities, as ``SLACK.genotype`` prints them);
* ``mu`` ``[N, 1]``: the upper bound of each op's smoothed uniform magnitude distribution
  (``SmoothedUniform(high=mu)``; no pre-processing function, so the raw value is the bound).

``N`` tells the family apart: 17 ops for CIFAR (``AugmentationsOptUMirror``), 18 for ImageNet-100
(``...Imagenet``: Hue inserted before Cutout, RandResizeCrop in RandomCrop's place), 20 for
DomainNet (``...Domainnet``: Hue before Cutout, RandResizeCrop before RandomCrop, Grayscale before
Solarize). :data:`OFFICIAL_OPS` transcribes those lists in the official order and
:data:`NAME_MAP` maps each official op name to fulcra's ``augmentations`` plugin name.

Only ``torch.load(weights_only=True)`` is used: nothing in a checkpoint is executed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from fulcra.errors import FormatError
from fulcra.policy import Policy, default_ranges

__all__ = ["OFFICIAL_OPS", "NAME_MAP", "OFFICIAL_RANGES", "from_official", "read_official", "PolicyCommand"]

_CIFAR = [
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "AutoContrast",
    "Invert",
    "Equalize",
    "Solarize",
    "Posterize",
    "ContrastMirror",
    "ColorMirror",
    "BrightnessMirror",
    "SharpnessMirror",
    "Cutout",
    "RandomCrop",
    "Identity",
]
# family -> the official op names, in the order of the official augmentation classes (index n of
# ``pi``'s last dimension is op n)
OFFICIAL_OPS: dict[str, list[str]] = {
    "cifar": list(_CIFAR),
    "imagenet": [*_CIFAR[:14], "HueMirror", "Cutout", "RandResizeCrop", "Identity"],
    "domainnet": [
        *_CIFAR[:8],
        "Grayscale",
        *_CIFAR[8:14],
        "HueMirror",
        "Cutout",
        "RandResizeCrop",
        "RandomCrop",
        "Identity",
    ],
}

# official op name -> fulcra ``augmentations`` plugin
NAME_MAP: dict[str, str] = {
    "ShearX": "shear_x",
    "ShearY": "shear_y",
    "TranslateX": "translate_x",
    "TranslateY": "translate_y",
    "Rotate": "rotate",
    "AutoContrast": "auto_contrast",
    "Invert": "invert",
    "Equalize": "equalize",
    "Grayscale": "grayscale",
    "Solarize": "solarize",
    "Posterize": "posterize",
    "ContrastMirror": "contrast",
    "ColorMirror": "color",
    "BrightnessMirror": "brightness",
    "SharpnessMirror": "sharpness",
    "HueMirror": "hue",
    "Cutout": "cutout",
    "RandResizeCrop": "random_resized_crop",
    "RandomCrop": "random_crop",
    "Identity": "identity",
}

# official (low, high) of ``default_augment_list`` and what the official op does with the value v,
# beside the fulcra range (Table A.2) that gives the same transform at the same magnitude; None:
# parameter-free. Shear is the one op whose parametrisation differs: the official code shears by
# 55·v degrees, Table A.2 (and fulcra) by the factor v, i.e. atan(v) degrees (see docs/slack.md).
OFFICIAL_RANGES: dict[str, tuple[tuple[float, float], str, list[float] | None]] = {
    "ShearX": ((0.0, 1.0), "shear 55·v degrees", [0.0, 1.0]),
    "ShearY": ((0.0, 1.0), "shear 55·v degrees", [0.0, 1.0]),
    "TranslateX": ((0.0, 0.75), "shift v · side", [0.0, 0.75]),
    "TranslateY": ((0.0, 0.75), "shift v · side", [0.0, 0.75]),
    "Rotate": ((0.0, 90.0), "rotate v degrees", [0.0, 90.0]),
    "AutoContrast": ((0.0, 1.0), "parameter-free", None),
    "Invert": ((0.0, 1.0), "parameter-free", None),
    "Equalize": ((0.0, 1.0), "parameter-free", None),
    "Grayscale": ((0.0, 1.0), "parameter-free", None),
    "Solarize": ((0.0, 255.0), "threshold 255 − v", [255.0, 0.0]),
    "Posterize": ((0.0, 6.0), "keep 8 − v bits", [8.0, 2.0]),
    "ContrastMirror": ((0.0, 0.99), "factor 1 ± v", [0.0, 0.99]),
    "ColorMirror": ((0.0, 0.99), "factor 1 ± v", [0.0, 0.99]),
    "BrightnessMirror": ((0.0, 0.99), "factor 1 ± v", [0.0, 0.99]),
    "SharpnessMirror": ((0.0, 0.99), "factor 1 ± v", [0.0, 0.99]),
    "HueMirror": ((0.0, 0.5), "hue shift ± v", [0.0, 0.5]),
    "Cutout": ((0.0, 1.0), "square of side v · side", [0.0, 1.0]),
    "RandResizeCrop": ((0.0, 0.95), "crop of area 1 − v", [1.0, 0.05]),
    "RandomCrop": ((0.0, 0.5), "pad v · side, crop back", [0.0, 0.5]),
    "Identity": ((0.0, 1.0), "parameter-free", None),
}

_BY_SIZE = {len(ops): fam for fam, ops in OFFICIAL_OPS.items()}


def _describe_families() -> str:
    return ", ".join(f"{fam} N={len(ops)}" for fam, ops in OFFICIAL_OPS.items())


def _find_state(obj: Any, source: str) -> dict:
    """The augmentation model's state dict inside a loaded checkpoint (``outer_model`` of the
    official ``models.ckpt``, or a bare state dict)."""
    if not isinstance(obj, dict):
        raise FormatError(f"{source}: not an official SLACK checkpoint (expected a dict, got {type(obj).__name__})")
    state = obj.get("outer_model", obj)
    if not isinstance(state, dict):
        raise FormatError(f"{source}: field 'outer_model' is not a state dict")
    # strip the DistributedDataParallel / wrapper prefixes
    return {str(k).rsplit(".", 1)[-1] if str(k).endswith((".pi", ".mu")) else str(k): v for k, v in state.items()}


def read_official(path: str | Path) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    """``(family, pi [K, N], mu [N] or None)`` of an official SLACK checkpoint.

    Raises:
        FormatError: unreadable file, no ``pi``, or shapes that match no official family.
    """
    path = Path(path).expanduser()
    source = str(path)
    if not path.is_file():
        raise FormatError(f"{source}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusing a non-tensor object, a truncated file, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{source}: cannot be read with torch.load(weights_only=True): {first}") from e
    state = _find_state(obj, source)
    pi = state.get("pi")
    if not isinstance(pi, torch.Tensor):
        raise FormatError(f"{source}: no tensor 'pi' (the policy logits) in the checkpoint's 'outer_model'")
    if pi.ndim != 2 or pi.shape[1] not in _BY_SIZE or pi.shape[0] < 1:
        raise FormatError(
            f"{source}: 'pi' has shape {tuple(pi.shape)}, which matches no official SLACK family "
            f"(K x N with {_describe_families()})"
        )
    n = int(pi.shape[1])
    family = _BY_SIZE[n]
    mu = state.get("mu")
    if mu is not None:
        if not isinstance(mu, torch.Tensor) or tuple(mu.shape) not in ((n, 1), (n,)):
            shape = tuple(mu.shape) if isinstance(mu, torch.Tensor) else type(mu).__name__
            raise FormatError(f"{source}: 'mu' has shape {shape}; the {family} family (N={n}) needs [{n}, 1]")
        mu = mu.reshape(n).to(torch.float64)
    pi = pi.to(torch.float64)
    if not bool(torch.isfinite(pi).all()) or (mu is not None and not bool(torch.isfinite(mu).all())):
        raise FormatError(f"{source}: 'pi' or 'mu' holds a non-finite value")
    return family, pi, mu


def from_official(path: str | Path, family: str | None = None, mu_default: float = 0.75) -> Policy:
    """An official SLACK checkpoint as a :class:`~fulcra.policy.Policy` over fulcra's ops.

    The op order is the official one (op ``n`` of ``pi`` is fulcra op ``NAME_MAP[OFFICIAL_OPS[family][n]]``),
    ``probs = softmax(pi)`` stage by stage, ``mu`` the official bounds (clamped to at most 1, as the
    official search keeps them in [0.1, 1]; a checkpoint searched with ``m_opt=False`` has no ``mu``
    and gets the official prior ``mu_default`` = 0.75), and ``ranges`` fulcra's Table A.2 ranges,
    which equal the official ones op by op (:data:`OFFICIAL_RANGES`; Shear excepted, see there).

    Args:
        path: the ``.ckpt`` file.
        family: ``cifar``, ``imagenet`` or ``domainnet`` to insist on (default: told by the shapes).
        mu_default: μ of a checkpoint without ``mu``.
    Raises:
        FormatError: the file is not an official checkpoint, or its shapes match no family (or not ``family``).
    """
    fam, pi, mu = read_official(path)
    if family is not None and family != fam:
        if family not in OFFICIAL_OPS:
            raise FormatError(f"{path}: unknown family '{family}' (have {sorted(OFFICIAL_OPS)})")
        raise FormatError(
            f"{path}: 'pi' has {pi.shape[1]} ops, the {fam} family; the {family} family has {len(OFFICIAL_OPS[family])}"
        )
    ops = [NAME_MAP[o] for o in OFFICIAL_OPS[fam]]
    if mu is None:
        mu = torch.full((len(ops),), float(mu_default), dtype=torch.float64)
    if bool((mu <= 0).any()):
        raise FormatError(f"{path}: 'mu' must be > 0, got {mu.min().item():g}")
    logits = torch.log_softmax(pi, dim=-1)  # same softmax as pi, normalised so probs are exact
    return Policy(ops, logits.to(torch.float32), mu.clamp(max=1.0).to(torch.float32), default_ranges(ops))


class PolicyCommand:
    """``fulcra policy import CKPT --out policy.json``: an official SLACK checkpoint to ``policy.json``."""

    help = "policy files: 'import CKPT --out policy.json' reads an official SLACK checkpoint"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser("import", help="official SLACK .ckpt (CIFAR, ImageNet-100, DomainNet) -> policy.json")
        imp.add_argument("ckpt", help="the official models.ckpt (e.g. slack/checkpoints/cifar/models/c10-40x2-s0.ckpt)")
        imp.add_argument("--out", required=True, help="policy.json to write")
        imp.add_argument("--family", choices=sorted(OFFICIAL_OPS), default=None, help="insist on this family")

    def run(self, args: argparse.Namespace) -> int:
        policy = from_official(args.ckpt, family=args.family)
        out = policy.save(Path(args.out).expanduser())
        fam = _BY_SIZE[policy.num_ops]
        print(f"wrote {out}: {fam} family, K={policy.num_stages}, N={policy.num_ops} ops")
        return 0

    # ``fulcra.Policy.from_official`` reaches the importer through the registry, by this attribute
    from_official = staticmethod(from_official)
