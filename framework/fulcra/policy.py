"""The SLACK augmentation policy (thesis §3.3.1, Eq. 3.1-3.2): what is learned, sampled and saved.

A policy over ``N`` transforms and ``K`` composition stages has

* ``logits`` π ``[K, N]``: stage ``k`` draws a transform from ``Cat(softmax(π_k))``, with replacement
  across stages;
* ``mu`` μ ``[N]`` in (0, 1]: the magnitude of transform ``n`` follows the *smoothed uniform*
  distribution, the law of ``u + ε`` with ``u ~ U(0, μ_n)`` and ``ε ~ N(0, σ²)``, σ = 0.1, whose
  density is ``p_μ(m) = (Φ((μ - m)/σ) - Φ(-m/σ)) / μ``. Sampled magnitudes are clamped to [0, 1]
  when applied; densities are of the unclamped draw, which is what REINFORCE differentiates.

``log p_φ(τ) = Σ_k log softmax(π_k)[t_k] + log p_{μ_{t_k}}(m_k)`` (transforms without a magnitude,
whose range is ``None``, contribute only their categorical term).

The policy file is JSON, readable by hand::

    {"ops": ["identity", "shear_x", ...],              # N transform names
     "probs": [[0.05, ...], [...], [...]],              # K lists of N probabilities
     "mu": [0.75, ...],                                 # N magnitude upper bounds in [0, 1]
      "ranges": {"shear_x": [0.0, 1.0], "identity": null, ...},  # value at magnitude 0 and 1
     "sigma": 0.1, "magnitude_mode": "smoothed_uniform"}       # optional; these are the defaults

>>> policy = fulcra.Policy.load("runs/pets/policy.json")
>>> transform = policy.as_transform()      # per image, for any torchvision/DataLoader pipeline
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .errors import FormatError

__all__ = ["Policy", "smoothed_uniform_log_density", "SIGMA"]

SIGMA = 0.1
_LOG_EPS = 1e-30


def smoothed_uniform_log_density(m: torch.Tensor, mu: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """``log p_μ(m)`` of the smoothed uniform distribution on [0, μ] (differentiable in μ).

    Args:
        m: magnitudes, any shape.
        mu: upper bounds, broadcastable to ``m``, > 0.
        sigma: standard deviation of the Gaussian smoothing.
    """
    mass = torch.special.ndtr((mu - m) / sigma) - torch.special.ndtr(-m / sigma)
    return torch.log(mass.clamp_min(_LOG_EPS)) - torch.log(mu)


class Policy:
    """A K-stage augmentation policy with learnable logits π ``[K, N]`` and magnitude bounds μ ``[N]``.

    Args:
        ops: the N transform names (``augmentations`` plugin names).
        logits: ``[K, N]`` float tensor.
        mu: ``[N]`` float tensor in (0, 1].
        ranges: ``{name: [v0, v1] or None}`` value at magnitude 0 and 1 (``None``: no magnitude).
        sigma: smoothing of the magnitude distribution (0: plain uniform on [0, μ], as TrivialAugment).
        magnitude_mode: ``"smoothed_uniform"`` (SLACK) or ``"fixed"`` (magnitude = μ, as RandAugment).
    """

    def __init__(
        self,
        ops: Sequence[str],
        logits: torch.Tensor,
        mu: torch.Tensor,
        ranges: Mapping[str, Sequence[float] | None] | None = None,
        sigma: float = SIGMA,
        magnitude_mode: str = "smoothed_uniform",
    ):
        self.ops = [str(o) for o in ops]
        self.logits = torch.as_tensor(logits, dtype=torch.float32).clone()
        self.mu = torch.as_tensor(mu, dtype=torch.float32).clone()
        n = len(self.ops)
        if self.logits.ndim != 2 or self.logits.shape[1] != n:
            raise ValueError(f"logits must be [K, {n}], got {tuple(self.logits.shape)}")
        if self.mu.shape != (n,):
            raise ValueError(f"mu must be [{n}], got {tuple(self.mu.shape)}")
        self.ranges = (
            {o: (None if (ranges or {}).get(o, None) is None else [float(v) for v in ranges[o]]) for o in self.ops}
            if ranges is not None
            else {o: None for o in self.ops}
        )
        self.sigma = float(sigma)
        if magnitude_mode not in ("smoothed_uniform", "fixed"):
            raise ValueError(f"magnitude_mode must be 'smoothed_uniform' or 'fixed', got {magnitude_mode!r}")
        self.magnitude_mode = magnitude_mode

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        ops: Sequence[str],
        num_stages: int = 3,
        mu: float = 0.75,
        ranges: Mapping[str, Sequence[float] | None] | None = None,
    ) -> Policy:
        """SLACK's initialisation: uniform π over the ``ops`` at each stage, every μ at ``mu``.

        Without ``ranges`` the bundled ops' default ranges are used (``None`` for parameter-free ops).
        """
        if ranges is None:
            ranges = default_ranges(ops)
        return cls(ops, torch.zeros(num_stages, len(ops)), torch.full((len(ops),), float(mu)), ranges)

    @property
    def num_stages(self) -> int:
        return self.logits.shape[0]

    @property
    def num_ops(self) -> int:
        return self.logits.shape[1]

    @property
    def has_magnitude(self) -> torch.Tensor:
        """``[N]`` bool: which transforms have a magnitude (a range)."""
        return torch.tensor([self.ranges.get(o) is not None for o in self.ops])

    def probs(self) -> torch.Tensor:
        """``[K, N]`` stage probabilities ``softmax(π)``."""
        return torch.softmax(self.logits.detach(), dim=-1)

    def clone(self) -> Policy:
        return Policy(self.ops, self.logits.detach(), self.mu.detach(), self.ranges, self.sigma, self.magnitude_mode)

    # --- sampling and densities -------------------------------------------------------------------
    def sample(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch`` composite augmentations.

        Returns:
            op_index ``[batch, K]`` int64 and magnitude ``[batch, K]`` float32 (unclamped smoothed
            uniform draws; ops clamp them to [0, 1]). All randomness comes from ``generator``,
            which must live on ``device`` (default: the generator's device, else CPU).
        """
        device = (
            torch.device(device)
            if device is not None
            else (generator.device if generator is not None else torch.device("cpu"))
        )
        p = self.probs().to(device)
        K = self.num_stages
        u = torch.rand(batch, K, generator=generator, device=device)
        cdf = p.cumsum(-1)
        cdf = cdf / cdf[:, -1:]
        idx = torch.searchsorted(cdf, u.t().contiguous(), right=True).t().clamp_max(self.num_ops - 1)
        mu = self.mu.detach().to(device)[idx]
        if self.magnitude_mode == "fixed":
            return idx.contiguous(), mu
        mags = torch.rand(batch, K, generator=generator, device=device) * mu
        if self.sigma > 0:
            mags = mags + self.sigma * torch.randn(batch, K, generator=generator, device=device)
        return idx.contiguous(), mags

    def log_prob(
        self,
        op_index: torch.Tensor,
        magnitude: torch.Tensor,
        logits: torch.Tensor | None = None,
        mu: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``log p_φ(τ)`` of sampled augmentations, differentiable in ``logits`` and ``mu``.

        Args:
            op_index: ``[B, K]`` int64.
            magnitude: ``[B, K]`` float (the unclamped draws of :meth:`sample`).
            logits, mu: parameters to differentiate (default: the policy's own).
        Returns:
            ``[B]`` log-probabilities.
        """
        logits = self.logits if logits is None else logits
        mu = self.mu if mu is None else mu
        dev = logits.device
        op_index, magnitude = op_index.to(dev), magnitude.to(dev)
        logp = torch.log_softmax(logits, dim=-1)  # [K, N]
        K = logits.shape[0]
        cat = logp[torch.arange(K, device=dev), op_index].sum(-1)  # [B]
        has = self.has_magnitude.to(dev)[op_index]
        lm = smoothed_uniform_log_density(magnitude, mu[op_index], self.sigma)
        return cat + torch.where(has, lm, torch.zeros_like(lm)).sum(-1)

    # --- KL anchoring ------------------------------------------------------------------------------
    @staticmethod
    def kl(logits: torch.Tensor, anchor_logits: torch.Tensor) -> torch.Tensor:
        """``KL(p_π ‖ p_π̃) = Σ_k Σ_n p_kn (log p_kn − log p̃_kn)`` (sum over the K independent stages)."""
        lp = torch.log_softmax(logits, -1)
        la = torch.log_softmax(anchor_logits, -1)
        return (lp.exp() * (lp - la)).sum()

    @staticmethod
    def kl_grad(logits: torch.Tensor, anchor_logits: torch.Tensor) -> torch.Tensor:
        """Exact ``∇_π KL(p_π ‖ p_π̃)``: ``p_kj (log p_kj − log p̃_kj − KL_k)``, shape ``[K, N]``."""
        lp = torch.log_softmax(logits.detach(), -1)
        la = torch.log_softmax(anchor_logits.detach(), -1)
        p = lp.exp()
        d = lp - la
        return p * (d - (p * d).sum(-1, keepdim=True))

    # --- application -------------------------------------------------------------------------------
    def build_ops(self) -> list:
        """The policy's ``N`` ops, built through the registry with this policy's value ranges."""
        return build_ops(self.ops, {o: r for o, r in self.ranges.items() if r is not None})

    def augmenter(self, applier: str = "composite"):
        """A :class:`~fulcra.interfaces.PolicyApplier` (an ``appliers`` plugin, by name) over this
        policy's ops and ranges; the bundled ``composite`` fuses the bundled ops' families and calls
        any other op's own ``__call__``."""
        from .registry import load_plugin

        return load_plugin("appliers", applier)(self.build_ops())

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None, augmenter=None) -> torch.Tensor:
        """Augment a batch ``[B, C, H, W]`` (uint8 or float), one composite augmentation per image."""
        aug = augmenter or self.augmenter()
        idx, mags = self.sample(images.shape[0], generator, images.device)
        return aug(images, idx, mags.clamp(0, 1), generator)

    def as_transform(self, seed: int | None = None) -> Callable[[Any], Any]:
        """A per-image callable for any data pipeline (torchvision ``Compose``, a ``Dataset``, ...).

        It accepts a ``[C, H, W]`` or ``[B, C, H, W]`` tensor (uint8 or float in [0, 1]) or a PIL
        image and returns the same type. With ``seed`` the draws come from a private generator
        (reproducible in one process); otherwise from torch's global generator, so DataLoader
        workers seeded by torch differ as usual.
        """
        return PolicyTransform(self, seed)

    # --- file format -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "ops": list(self.ops),
            "probs": [[float(v) for v in row] for row in self.probs().tolist()],
            "mu": [float(v) for v in self.mu.detach().tolist()],
            "ranges": {o: self.ranges[o] for o in self.ops},
            "sigma": self.sigma,
            "magnitude_mode": self.magnitude_mode,
        }

    def save(self, path: str | Path) -> Path:
        """Write the policy as readable JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> Policy:
        for key in ("ops", "probs", "mu"):
            if key not in d:
                raise FormatError(f"{source}: missing field '{key}'")
        ops = list(d["ops"])
        n = len(ops)
        try:
            probs = torch.tensor(d["probs"], dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise FormatError(f"{source}: field 'probs' must be K lists of {n} numbers") from e
        if probs.ndim != 2 or probs.shape[1] != n or probs.shape[0] < 1:
            raise FormatError(f"{source}: field 'probs' must be K lists of {n} numbers, got shape {tuple(probs.shape)}")
        if (probs < 0).any() or ((probs.sum(-1) - 1).abs() > 1e-3).any():
            raise FormatError(f"{source}: field 'probs': each stage must be non-negative and sum to 1")
        try:
            mu = torch.tensor(d["mu"], dtype=torch.float32)
        except (TypeError, ValueError) as e:
            raise FormatError(f"{source}: field 'mu' must be {n} numbers in (0, 1]") from e
        # written so that NaN fails too (every comparison with NaN is False)
        if mu.shape != (n,) or not bool(((mu > 0) & (mu <= 1)).all()):
            raise FormatError(f"{source}: field 'mu' must be {n} numbers in (0, 1], got {d['mu']!r}")
        if not bool(torch.isfinite(probs).all()):
            raise FormatError(f"{source}: field 'probs' holds a non-finite value")
        ranges = d.get("ranges")
        if ranges is not None and not isinstance(ranges, Mapping):
            raise FormatError(f"{source}: field 'ranges' must map transform names to [v0, v1] or null")
        if ranges is None:
            ranges = default_ranges(ops)
        logits = torch.log(probs.clamp_min(1e-12)).to(torch.float32)
        mode = d.get("magnitude_mode", "smoothed_uniform")
        if mode not in ("smoothed_uniform", "fixed"):
            raise FormatError(f"{source}: field 'magnitude_mode' must be 'smoothed_uniform' or 'fixed', got {mode!r}")
        sigma = d.get("sigma", SIGMA)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise FormatError(f"{source}: field 'sigma' must be a number >= 0, got {sigma!r}")
        for o, r in (ranges or {}).items():
            if r is not None and (
                not isinstance(r, (list, tuple))
                or len(r) != 2
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in r)
            ):
                raise FormatError(
                    f"{source}: field 'ranges.{o}' must be [v0, v1] (two finite numbers) or null, got {r!r}"
                )
        return cls(ops, logits, mu, ranges, float(sigma), mode)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy file written by :meth:`save`; a malformed file raises ``FormatError``."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(d, Mapping):
            raise FormatError(f"{path}: expected a JSON object")
        return cls.from_dict(d, str(path))

    @classmethod
    def from_official(cls, path: str | Path, **kwargs: Any) -> Policy:
        """Read a policy published with the official SLACK code (a ``models.ckpt`` holding ``pi``
        ``[K, N]`` and ``mu``), mapped onto fulcra's op names.

        The core knows no official op table: this asks the ``commands`` plugin ``policy`` (through
        the registry) for its ``from_official`` importer, the bundled
        ``fulcra_plugins.slack.official.from_official``. ``kwargs`` go to it (``family=``).
        """
        from .errors import PluginLoadError
        from .registry import load_plugin

        importer = getattr(load_plugin("commands", "policy"), "from_official", None)
        if not callable(importer):
            raise PluginLoadError("commands plugin 'policy' has no from_official(path) importer")
        policy = importer(path, **kwargs)
        if not isinstance(policy, Policy):
            raise PluginLoadError(f"commands plugin 'policy': from_official returned {type(policy).__name__}")
        return policy

    def __repr__(self) -> str:
        return f"Policy(K={self.num_stages}, N={self.num_ops}, ops={self.ops})"


def build_ops(names: Sequence[str], ranges: Mapping[str, Sequence[float]] | None = None) -> list:
    """Instantiate ``augmentations`` plugins by name through the registry (bundled or third-party
    alike), with optional ``{name: [v0, v1]}`` value-range overrides."""
    from .config import create

    ranges = dict(ranges or {})
    return [
        create("augmentations", n, **({"value_range": list(vr)} if (vr := ranges.get(n)) is not None else {}))
        for n in names
    ]


def default_ranges(ops: Sequence[str]) -> dict[str, list[float] | None]:
    """Each op's own default ``value_range`` (Table A.2 for the bundled ones), read from its
    ``augmentations`` plugin through the registry; ``None`` for parameter-free ops
    (``has_magnitude = False``). An unknown name raises the registry's one-line error."""
    from .config import create

    out: dict[str, list[float] | None] = {}
    for o in ops:
        op = create("augmentations", o)
        out[o] = [float(v) for v in op.value_range] if getattr(op, "has_magnitude", True) else None
    return out


class PolicyTransform:
    """Per-image callable wrapping a :class:`Policy` (see :meth:`Policy.as_transform`)."""

    def __init__(self, policy: Policy, seed: int | None = None):
        self.policy = policy
        self.seed = seed
        self._gen = None
        self._aug = None

    def __call__(self, img):
        if self._aug is None:
            self._aug = self.policy.augmenter()
        if self.seed is not None and self._gen is None:
            self._gen = torch.Generator().manual_seed(int(self.seed))
        pil = not isinstance(img, torch.Tensor)
        if pil:
            from torchvision.transforms.v2 import functional as TF

            x = TF.pil_to_tensor(img)
        else:
            x = img
        single = x.ndim == 3
        batch = x.unsqueeze(0) if single else x
        dev = batch.device
        gen = self._gen if dev.type == "cpu" else None
        idx, mags = self.policy.sample(batch.shape[0], gen, "cpu")
        out = self._aug(batch, idx.to(dev), mags.clamp(0, 1).to(dev), gen)
        out = out[0] if single else out
        if pil:
            from torchvision.transforms.v2 import functional as TF

            return TF.to_pil_image(out)
        return out

    def __repr__(self) -> str:
        return f"PolicyTransform({self.policy!r}, seed={self.seed})"
