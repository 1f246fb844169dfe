"""Device and dtype selection, seeding, RNG state capture, atomic checkpoints, statistics."""

from __future__ import annotations

import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, FormatError

__all__ = [
    "select_device",
    "select_dtype",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "load_checkpoint",
    "mean_ci",
    "over_seeds",
]


def select_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> the local CUDA device when available (per LOCAL_RANK under torchrun), else CPU."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available (use device=cpu or auto)")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"device {spec!r} is not a valid torch device") from exc


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def select_dtype(spec: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` -> float16 on CUDA, float32 on CPU (half-precision matmuls are slow on CPU)."""
    if isinstance(spec, torch.dtype):
        return spec
    if spec in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if spec not in _DTYPES:
        raise ConfigError(f"dtype {spec!r} unknown (choose from {', '.join(_DTYPES)})")
    return _DTYPES[spec]


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and CUDA). With ``deterministic``, ask torch for
    deterministic algorithms where they exist (warn-only) so CPU runs repeat bit for bit."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state() -> dict:
    """Every global RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write(path: str | Path, write: Any, mode: str) -> Path:
    """Write through ``write(fh)`` to a temporary file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write(path: str | Path, write: Any, binary: bool = True) -> Path:
    """Write a file atomically through ``write(fh)`` (a file opened for writing, binary by default):
    a temporary file in the same folder, fsync, then ``os.replace``. For formats streamed in pieces
    (a large array written chunk by chunk) that :func:`atomic_save` cannot hold in one object."""
    return _atomic_write(path, write, "wb" if binary else "w")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically: a reader (or a resume after SIGKILL) sees the old complete file or
    the new complete file, never half of one."""
    return _atomic_write(path, lambda fh: torch.save(obj, fh), "wb")


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write a text file (JSON results, policies) atomically."""
    return _atomic_write(path, lambda fh: fh.write(text), "w")


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint without running code from it (``weights_only=True``)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise FormatError(
            f"{path}: not a loadable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc


# two-sided 97.5% quantiles of Student's t for small n (df = n - 1), so scipy is not a core dependency
_T975 = [
    float("nan"),
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def _t975(df: int) -> float:
    if df < len(_T975):
        return _T975[df]
    # Cornish-Fisher expansion around the normal quantile; < 1e-3 off for df > 30
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> dict:
    """Mean and the half-width of its 95% confidence interval (Student's t, sample std).

    Returns ``{"values", "mean", "ci95", "n"}``; ``ci95`` is 0 for a single value."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = sum(vals) / n
    if n == 1:
        return {"values": vals, "mean": mean, "ci95": 0.0, "n": 1}
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return {"values": vals, "mean": mean, "ci95": _t975(n - 1) * math.sqrt(var / n), "n": n}


def format_mean_ci(stats: dict, scale: float = 100.0, digits: int = 2) -> str:
    """``"95.11 ± 1.48"`` from a :func:`mean_ci` result (values times ``scale``), and
    ``"95.11 ± n/a"`` over a single value, whose interval is undefined (not zero)."""
    mean = f"{scale * stats['mean']:.{digits}f}"
    if int(stats.get("n", 2)) < 2:
        return f"{mean} ± n/a"
    return f"{mean} ± {scale * stats['ci95']:.{digits}f}"


def over_seeds(fn, seeds: Sequence[int], path: str | Path | None = None, key: str = "score") -> dict:
    """Run ``fn(seed) -> float | dict`` for each seed and summarise with :func:`mean_ci`.

    With ``path`` (a JSON file), finished seeds are stored after each one and skipped when run
    again, so an evaluation killed between seeds resumes where it stopped. A dict result is
    summarised on its ``key`` entry and kept whole under ``per_seed``.
    """
    import json

    done: dict = {}
    if path is not None and Path(path).is_file():
        done = json.loads(Path(path).read_text(encoding="utf-8"))
    for seed in seeds:
        if str(seed) in done:
            continue
        done[str(seed)] = fn(int(seed))
        if path is not None:
            atomic_write_text(json.dumps(done, indent=1), path)
    values = [done[str(s)][key] if isinstance(done[str(s)], dict) else done[str(s)] for s in seeds]
    return {**mean_ci(values), "seeds": [int(s) for s in seeds], "per_seed": {str(s): done[str(s)] for s in seeds}}
