"""The plugin kinds of fulcra: one Protocol per kind, plus small ``Base*`` classes doing shared work.

Core code is typed against the Protocols; a plugin may subclass the Base class or just provide the
methods. :func:`fulcra.registry.check_kind` verifies the required members when a plugin loads, and
:mod:`fulcra.testing` runs behavioural conformance checks on tiny inputs.

Every kind has an entry-point group ``fulcra.<kind>`` (see :data:`KINDS`). A plugin class declares
its parameters either as a ``Config`` dataclass (fields with ``metadata={"help": ...}``) or through
the typed signature of ``__init__``; :mod:`fulcra.config` validates them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import torch

from .camera import Camera

__all__ = [
    "KINDS",
    "FeatureExtractor",
    "AugmentationOp",
    "BaseAugmentationOp",
    "PolicyApplier",
    "PolicyOptimizer",
    "Teacher",
    "Student",
    "SceneRepresentation",
    "EditableScene",
    "AlphaScene",
    "RGBScene",
    "AdjointScene",
    "Refiner",
    "FittableExtractor",
    "PromptedExtractor",
    "CachingExtractor",
    "Backbone",
    "BACKBONE_KEYS",
    "Task",
    "Workflow",
    "Dataset",
    "Generator",
    "RunContext",
]


@runtime_checkable
class FeatureExtractor(Protocol):
    """Dense 2D features from images.

    ``__call__(images)``: ``images`` is ``[B, 3, H, W]`` float32 in [0, 1]; returns ``[B, D, h, w]``
    float32 (``h, w`` may be a patch grid smaller than ``H, W``; consumers resize bilinearly).
    Extractors that need prompts (SAM) accept ``prompts=`` a list of ``[P, 2]`` (x, y) pixel
    coordinates per image. CLIP-like extractors also implement ``embed_text(list[str]) -> [T, D]``.

    Attributes:
        dim: the output feature dimension ``D`` (``None`` if it depends on the input).
    """

    dim: int | None

    def __call__(self, images: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


# Optional extractor capabilities. A workflow tests for them with ``isinstance`` and does without
# when an extractor lacks one; nothing is ever set on an extractor from outside.


@runtime_checkable
class FittableExtractor(Protocol):
    """An extractor with a dataset-level step run over all views before extracting (DINOv2's PCA
    over the views of a scene, app. C.1.2).

    ``fit(views)``: ``views`` a sequence of images ``[3, H, W]`` float in [0, 1] or zero-argument
    callables returning one (so a large scene is never in memory at once); returns the extractor.
    ``fitted``: False until ``fit`` ran (or when the extractor needs no fit with its settings).
    The workflows call ``fit`` over the views they uplift when ``fitted`` is False.
    """

    fitted: bool

    def fit(self, views: Sequence[Any]) -> Any: ...


@runtime_checkable
class PromptedExtractor(Protocol):
    """An extractor that maps an image *and point prompts* to masks (SAM, SAM 2).

    ``needs_prompts``: True (a class attribute, so a workflow can check it before building the
    plugin). ``__call__(images [B, 3, H, W], positive=[B] of [H, W] bool)`` returns ``[B, C, h, w]``
    masks in [0, 1]. ``segment method=sam`` needs one; the feature routes refuse one.
    """

    needs_prompts: bool


@runtime_checkable
class CachingExtractor(Protocol):
    """An extractor that keeps its per-view outputs on disk, keyed by image content and settings.

    ``cache_dir``: the folder in use (``None``: no cache), normally given at construction.
    ``set_cache(directory)``: use ``directory`` from now on (``None`` turns caching off). The
    workflows give an extractor without a cache ``OUT/feature_cache``, so that a fit over the views
    and the extraction encode each view once and a resumed run re-extracts nothing.
    """

    cache_dir: Any

    def set_cache(self, directory: str | Path | None) -> None: ...


@runtime_checkable
class AugmentationOp(Protocol):
    """One image transform acting on a batch.

    Images are ``[B, C, H, W]``, uint8 in [0, 255] or float in [0, 1]; every op returns the dtype,
    device and shape it was given (crops resize back to ``H, W``).

    - ``value_range``: ``(low, high)`` of the op's natural parameter (degrees, factor, pixels, ...).
    - ``symmetric``: whether the value gets a random sign.
    - ``magnitude_to_value(m, sign)``: ``m`` ``[B]`` in [0, 1] -> value ``[B]``.
    - ``apply(images, value)``: deterministic; ``value`` is a float or ``[B]`` tensor, one per image,
      in the same units as ``torchvision.transforms.v2.functional``.
    - ``__call__(images, magnitude, generator=None)``: draws any remaining randomness (sign, position)
      per image from ``generator``; ``magnitude`` a float or ``[B]`` in [0, 1].
    - optional ``has_magnitude`` (default True): False for parameter-free ops (Invert, Equalize);
      a policy then gives the op no magnitude range and learns no μ for it.

    That is all a policy search needs: a SLACK search space takes the op's ``value_range`` through
    the registry, and appliers call ``__call__`` on the images that drew the op. Ops that also
    implement ``sample_params``/``apply_params`` (as :class:`BaseAugmentationOp` does) can have
    their draws replayed, and the bundled applier fuses its own op families.
    """

    name: str
    value_range: tuple[float, float]
    symmetric: bool

    def apply(self, images: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor: ...

    def __call__(
        self, images: torch.Tensor, magnitude: torch.Tensor | float, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


class BaseAugmentationOp(ABC):
    """Shared work for ops: magnitude -> value mapping, per-image sign draws, dtype bookkeeping.

    Subclasses set ``value_range``/``symmetric`` and implement :meth:`apply`; ops with extra
    randomness (Cutout position, crops) override :meth:`sample_params` and :meth:`apply_params`.
    """

    name: str = ""
    value_range: tuple[float, float] = (0.0, 1.0)
    symmetric: bool = False

    def __init__(self, value_range: Sequence[float] | None = None):
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            self.value_range = (lo, hi)

    def magnitude_to_value(self, magnitude: torch.Tensor, sign: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = self.value_range
        value = lo + (hi - lo) * magnitude
        if self.symmetric and sign is not None:
            value = value * sign
        return value

    def sample_params(self, images: torch.Tensor, magnitude: torch.Tensor, generator: torch.Generator | None) -> dict:
        """Draw everything random for a batch; ``magnitude`` is ``[B]``. Returns replayable params."""
        sign = None
        if self.symmetric:
            sign = torch.randint(0, 2, magnitude.shape, generator=generator, device=magnitude.device) * 2 - 1
            sign = sign.to(magnitude.dtype)
        return {"value": self.magnitude_to_value(magnitude, sign)}

    def apply_params(self, images: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        return self.apply(images, params["value"])

    @abstractmethod
    def apply(self, images: torch.Tensor, value: torch.Tensor | float) -> torch.Tensor: ...

    def __call__(self, images, magnitude, generator=None):
        mag = torch.as_tensor(magnitude, dtype=torch.float32, device=images.device)
        if mag.ndim == 0:
            mag = mag.expand(images.shape[0])
        return self.apply_params(images, self.sample_params(images, mag, generator))


@runtime_checkable
class PolicyApplier(Protocol):
    """Applies per-image compositions of augmentation ops to a batch (a policy's sampled ``τ``).

    Constructed with ``ops``, the ``N`` op instances (any :class:`AugmentationOp`);
    ``__call__(images, op_index, magnitude, generator=None)``: ``images`` ``[B, C, H, W]`` uint8 or
    float in [0, 1], ``op_index`` ``[B, K]`` int64 indices into ``ops``, ``magnitude`` ``[B, K]`` in
    [0, 1]; returns the augmented ``[B, C, H, W]``, same dtype and device, stage ``k`` applied
    before stage ``k + 1``. Remaining randomness (signs, positions) comes from ``generator``, and
    the result must not depend on how the implementation chunks or groups the batch.
    :meth:`fulcra.policy.Policy.augmenter` builds one by name (default ``composite``).
    """

    def __call__(self, images: torch.Tensor, op_index: torch.Tensor, magnitude: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor: ...


@runtime_checkable
class PolicyOptimizer(Protocol):
    """Searches an augmentation policy.

    ``search(train_data, val_data, model_factory, ctx) -> Policy`` where the datasets yield
    ``(image [C,H,W] uint8, label int)`` and ``model_factory()`` returns a fresh ``nn.Module``
    mapping ``[B,C,H,W]`` float to ``[B, num_classes]`` logits. Search-free baselines return their
    fixed policy without training. The result is a :class:`fulcra.policy.Policy`.
    """

    def search(self, train_data: Any, val_data: Any, model_factory: Callable[[], torch.nn.Module], ctx: "RunContext") -> Any: ...


@runtime_checkable
class Teacher(Protocol):
    """A frozen pretrained encoder plus a probed (trainable) head.

    ``__call__(images)``: ``[B, 3, H, W]`` float (normalised as ``self.mean``/``self.std`` say)
    -> logits ``[B, num_classes]`` (classification) or ``[B, num_classes, H, W]`` (segmentation).
    ``encode(images)`` gives the frozen features the head reads (cacheable); ``head`` is the
    trainable ``nn.Module``; ``parameters()`` yields only the head's parameters.
    """

    head: torch.nn.Module

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Student(Protocol):
    """A small trainable model: an ``nn.Module`` mapping ``[B, C, H, W]`` float to logits
    ``[B, num_classes]`` or dense logits ``[B, num_classes, H, W]``; ``features(images)`` returns the
    penultimate representation ``[B, D]`` (used for PCA plots)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def parameters(self) -> Iterable[torch.nn.Parameter]: ...


@runtime_checkable
class SceneRepresentation(Protocol):
    """A 3D scene of ``N`` primitives that can carry arbitrary per-primitive features.

    ``render(features, camera)``: ``features`` ``[N, D]`` float32, any ``D`` -> ``[H, W, D]`` float32,
    the alpha-composited features. It must be **linear in** ``features`` and differentiable with
    respect to them (autograd), so that :func:`fulcra.uplift` can compute ``Wᵀ F`` generically.

    This is all the workflows (``uplift``, ``segment``, ``segment-synthetic``), the ``Selector`` and
    :func:`fulcra.uplift` need. A plugin is built as ``create("scenes", NAME, ply=PATH, device=...)``
    (``ply`` the scene file, whatever its format; ``device`` ``auto``/``cpu``/``cuda``). What only
    some scenes can do is a separate protocol: :class:`EditableScene` (removal, extraction to PLY),
    :class:`AlphaScene`, :class:`RGBScene`, :class:`AdjointScene` (a fused ``Wᵀ F``).

    Attributes:
        num_primitives: ``N``.
        positions: ``[N, 3]`` float32 primitive centres in world coordinates (the graph of the
            refiners, 3D selection).
        device: optional; where the scene's tensors live (default: CPU).
    """

    num_primitives: int
    positions: torch.Tensor  # [N, 3]

    def render(self, features: torch.Tensor, camera: Camera) -> torch.Tensor: ...


@runtime_checkable
class EditableScene(Protocol):
    """A scene that can be cut and saved (object removal and extraction, pruning).

    ``subset(index)``: ``index`` ``[N]`` bool or ``[M]`` long -> a scene of the same plugin keeping
    those primitives (in their order). ``save_ply(path)``: write the scene as a file (an INRIA 3DGS
    PLY for Gaussian scenes) and return its path. Without it, ``segment`` still writes ``mask3d.npy``
    and the masks and says that removal needs this protocol; ``uplift`` skips ``prune.keep``.
    """

    def subset(self, index: torch.Tensor) -> Any: ...

    def save_ply(self, path: str | Path) -> Path: ...


@runtime_checkable
class AlphaScene(Protocol):
    """``render_alpha(camera) -> [H, W]`` float32 accumulated opacity in [0, 1]. Without it the
    workflows render a constant feature 1 (the same thing for a linear renderer)."""

    def render_alpha(self, camera: Camera) -> torch.Tensor: ...


@runtime_checkable
class RGBScene(Protocol):
    """``render_rgb(camera) -> [H, W, 3]`` float32: the scene's own colours (spherical harmonics for
    3DGS), used by demos to show an edited scene."""

    def render_rgb(self, camera: Camera) -> torch.Tensor: ...


@runtime_checkable
class AdjointScene(Protocol):
    """``render_adjoint(images [H, W, D], camera) -> [N, D]``: a fused ``Wᵀ F``, the transpose of
    ``render``. :func:`fulcra.uplift.adjoint` uses it when present, else autograd through ``render``."""

    def render_adjoint(self, images: torch.Tensor, camera: Camera) -> torch.Tensor: ...


@runtime_checkable
class Refiner(Protocol):
    """Improves per-primitive scores with 3D geometry and feature similarity.

    ``refine(positions [N, 3], features [N, D], scores [N, Q], **kwargs) -> [N, Q]`` float32 scores,
    one column per prompt (query), in [0, 1] unless stated otherwise by the plugin; ``scores`` may
    also be ``[N]`` (then the result is ``[N]``). ``scores`` are non-negative initial scores: the
    uplifted prompt (scribble or mask, ``Wᵀ M`` unnormalised) or 3D relevancies.

    Keyword arguments the workflows pass (a refiner may ignore any of them, and must accept them):

    - ``prompt``: ``"scribble"``, ``"mask"`` or ``"relevancy"``, what ``scores`` holds;
    - ``weights``: ``[N]`` float32 per-primitive rendering-weight sums from the uplift (how well each
      primitive is seen), or ``None``.

    The workflows binarise the result at ``> 0`` (scribbles) or ``> 0.5`` (mask) unless told
    otherwise (``threshold=``), so a refiner returns 0 for primitives it rules out.
    """

    def refine(self, positions: torch.Tensor, features: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


#: the constructor keywords every consumer may pass to a backbone plugin (see :class:`Backbone`)
BACKBONE_KEYS = ("weights", "tiny", "pretrained", "device")


@runtime_checkable
class Backbone(Protocol):
    """A pretrained image encoder with a token interface, used wherever a backbone is named: the
    encoder of a teacher (``teacher.backbone=``), the initialisation of a student
    (``student.backbone=``) and a dense ViT feature extractor (``extractor=vit extractor.backbone=``).

    A backbone is a ``torch.nn.Module``: teachers freeze it, students train it end to end (so
    :meth:`forward_tokens` must be differentiable), ``.to()`` moves it and ``state_dict()`` saves it.

    Attributes:
        embed_dim: ``D``, the token width (``int``).
        patch_size: ``p``, pixels per patch side (``int``); the patch grid of an ``H x W`` input is
            ``H/p x W/p``. A convolutional encoder states its total stride.
        depth: optional, the number of blocks (the largest ``n_last``); absent or ``None``: unknown.

    ``normalize(images01)``: ``[B, 3, H, W]`` float in [0, 1] (or uint8 in [0, 255]) -> ``[B, 3, H, W]``
    float, normalised as :meth:`forward_tokens` expects (the encoder's mean/std); same device, same
    size (callers resize before, to multiples of ``patch_size``).

    ``forward_tokens(images, n_last=1)``: ``images`` ``[B, 3, H, W]`` normalised, ``H`` and ``W``
    multiples of ``patch_size`` (any size: position embeddings are resampled when needed) ->
    ``{"cls": [n_last tensors [B, D]], "patch": [B, D, H/p, W/p]}``, float (the input's dtype):
    ``cls`` holds a global embedding of each of the last ``n_last`` blocks, oldest first (the last
    entry is the final block's; ViTs give the final-normed CLS token, encoders without one may
    average-pool the patch tokens); ``patch`` holds the final block's final-normed patch tokens.
    ``n_last`` outside ``1..depth`` is a :class:`~fulcra.errors.ConfigError`.

    Constructor. A backbone plugin is built as ``cls(**own_keys, weights=..., tiny=..., pretrained=...,
    device=...)`` where the four standard keys (:data:`BACKBONE_KEYS`) are passed only when they
    differ from these defaults, so a plugin may leave out those it cannot honour:

    - ``weights: str | None = None``: a local file; ``None`` means the plugin's own caches (or no file
      when ``tiny`` or not ``pretrained``). A file saved from the backbone's own ``state_dict()``
      (safetensors) with the same ``tiny`` and own keys must load back exactly: distillation's
      offline pre-training writes such files and passes them as ``weights``.
    - ``tiny: bool = False``: a small model of the same family, randomly initialised (deterministic
      under ``torch.manual_seed``), for tests and offline demos; loads ``weights`` when given.
    - ``pretrained: bool = True``: ``False`` builds the architecture with random weights and looks
      for no file (students trained from scratch).
    - ``device: str = "cpu"``: where the model is put; it comes back in eval mode.

    Weights are read from local files only (safetensors or ``torch.load(weights_only=True)``,
    :func:`fulcra.weights.load_state_dict_file`); a missing file is a
    :class:`~fulcra.errors.WeightsNotFoundError` naming it (:func:`fulcra.weights.find_weights`).

    Optional: a classmethod ``locate_weights(weights=None, **own_keys) -> Path`` that finds the file
    without building the model, so a workflow can fail before any work (raises
    ``WeightsNotFoundError``).
    """

    embed_dim: int
    patch_size: int

    def normalize(self, images: torch.Tensor) -> torch.Tensor: ...

    def forward_tokens(self, images: torch.Tensor, n_last: int = 1) -> dict[str, Any]: ...


@runtime_checkable
class Task(Protocol):
    """What is solved and how it is scored.

    ``loss(outputs, targets) -> scalar tensor``; ``metric(outputs, targets) -> dict[str, float]``
    computed over a batch and accumulated by ``reduce(list_of_batch_metrics)``; ``metric_name`` the
    headline metric (``accuracy``, ``miou``, ``iou``, ...), higher is better.
    """

    metric_name: str

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict: ...


@runtime_checkable
class Dataset(Protocol):
    """A data source: ``splits() -> dict[str, torch.utils.data.Dataset]`` of ``(image, target)``
    pairs, images ``[C, H, W]`` uint8, plus ``num_classes``."""

    num_classes: int

    def splits(self) -> dict: ...


@runtime_checkable
class Generator(Protocol):
    """Synthetic image generator (ImageMixer, Mixup, CutMix): ``generate(images [B,3,H,W] float in
    [0,1], generator) -> [B', 3, H, W]`` float in [0,1]; mixing ones combine ``mix_k`` inputs each."""

    def generate(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


@dataclass
class RunContext:
    """What a workflow receives besides its config: where to write, the device, the hook relay."""

    out: Path
    device: torch.device
    hooks: Any  # fulcra.hooks.HookRelay
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@runtime_checkable
class Workflow(Protocol):
    """A runnable pipeline (``search``, ``distill``, ``uplift``, ``segment``): ``run(ctx) -> dict``.

    Its constructor takes the validated config; components in the config are ``{name: ..., params}``
    nodes built with :func:`fulcra.create_from_config`. It writes its outputs under ``ctx.out`` and
    must resume from ``ctx.out`` when run again after being killed.
    """

    def run(self, ctx: RunContext) -> dict: ...


# kind -> (entry point group, protocol, required members)
KINDS: dict[str, tuple[str, type, tuple[str, ...]]] = {
    "feature_extractors": ("fulcra.feature_extractors", FeatureExtractor, ("__call__",)),
    "augmentations": ("fulcra.augmentations", AugmentationOp, ("apply", "__call__", "value_range")),
    "appliers": ("fulcra.appliers", PolicyApplier, ("__call__",)),
    "policy_optimizers": ("fulcra.policy_optimizers", PolicyOptimizer, ("search",)),
    "teachers": ("fulcra.teachers", Teacher, ("__call__", "encode")),
    "students": ("fulcra.students", Student, ("__call__",)),
    "scenes": ("fulcra.scenes", SceneRepresentation, ("render",)),
    "refiners": ("fulcra.refiners", Refiner, ("refine",)),
    "backbones": ("fulcra.backbones", Backbone, ("normalize", "forward_tokens")),
    "tasks": ("fulcra.tasks", Task, ("loss", "metric")),
    "datasets": ("fulcra.datasets", Dataset, ("splits",)),
    "generators": ("fulcra.generators", Generator, ("generate",)),
    "workflows": ("fulcra.workflows", Workflow, ("run",)),
    "hooks": ("fulcra.hooks", object, ()),
}
