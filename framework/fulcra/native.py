"""Small compiled kernels for plugins: a C source built with the system compiler, loaded by ctypes.

A plugin that has a hot loop NumPy/torch cannot vectorise ships the loop as a C file next to its
Python code and asks for it at run time::

    from fulcra import native

    lib = native.load(Path(__file__).with_name("_knn.c"), openmp=True)
    if lib is None:                      # no compiler, FULCRA_NATIVE=0, or the build failed
        ...                              # the pure NumPy/torch path (tell the user once: native.reason(...))
    else:
        lib.my_kernel.argtypes = [...]   # declare the C signature, then call with native.ptr(array)

What happens on :func:`load`:

- the source is compiled once per (source text, flags, compiler) into a per-user cache,
  ``$FULCRA_NATIVE_CACHE`` or ``$XDG_CACHE_HOME/fulcra/native`` (``~/.cache/fulcra/native``), as
  ``<name>-<sha256 prefix>.so``. The compiler writes a private temporary file in that folder which
  is then renamed onto the final name (atomic on POSIX), so concurrent first uses from several
  processes (pytest-xdist, torchrun) each either build their own copy or find a complete one;
- the compiler is ``$CC`` or ``cc``, with portable flags (``-O3 -march=x86-64-v2`` on x86-64,
  ``-O3`` elsewhere, ``-fPIC -shared -std=c99 -fno-fast-math -ffp-contract=off`` (IEEE arithmetic as
  written: no reassociation, no fused multiply-adds, so float kernels round alike on every
  machine), plus ``-fopenmp`` when asked and supported: if the OpenMP build fails the source is built again without it, so kernels must also compile as plain C, e.g.
  guard ``omp.h`` with ``#ifdef _OPENMP``);
- ``FULCRA_NATIVE=0`` (or ``false``/``no``/``off``) disables every kernel: :func:`load` returns
  None and the caller's fallback runs — the switch tests use to cover both paths.

:func:`load` never raises for a missing or failing compiler: it returns None and records a
one-line reason (:func:`reason`). Kernels take raw pointers to contiguous buffers; :func:`ptr`
checks dtype and contiguity before handing one over. A kernel must give the same output for any
thread count (each output element computed by one thread in a fixed order) — fulcra's results
must not depend on the machine.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["load", "kernel", "reason", "enabled", "cache_dir", "ptr", "compiler", "threads"]

_lock = threading.Lock()
_loaded: dict[tuple, tuple[ctypes.CDLL | None, str]] = {}
_reasons: dict[str, str] = {}


# GNU libgomp's thread pool does not survive fork(): a forked child (a DataLoader or multiprocessing
# worker) whose parent ran an OpenMP kernel on several threads would hang in its first parallel
# region. Children therefore run every kernel on one thread (outputs never depend on the count).
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def threads() -> int:
    """The thread count to hand an OpenMP kernel: torch's intra-op count, or 1 in a forked child
    (libgomp cannot start a team there once the parent has used one)."""
    if _forked:
        return 1
    import torch

    return max(1, torch.get_num_threads())


def enabled() -> bool:
    """False when ``FULCRA_NATIVE`` is set to 0/false/no/off."""
    return os.environ.get("FULCRA_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where compiled kernels are kept (``$FULCRA_NATIVE_CACHE``, else the user's cache folder)."""
    env = os.environ.get("FULCRA_NATIVE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fulcra" / "native"


def compiler() -> str | None:
    """Path of the C compiler that :func:`load` uses (``$CC`` or ``cc``), None if there is none."""
    cc = os.environ.get("CC", "cc").split()
    return shutil.which(cc[0]) if cc else None


def _base_flags() -> list[str]:
    # -ffp-contract=off: no fused multiply-adds behind the source's back (clang contracts by default,
    # and FMA-capable targets would round differently from x86-64-v2): same bits on every machine.
    flags = ["-O3", "-fPIC", "-shared", "-std=c99", "-fno-fast-math", "-ffp-contract=off"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-march=x86-64-v2")  # SSE4.2/POPCNT: every x86-64 machine of the last decade
    return flags


def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return cc + "\n" + out


def _build(cc: str, src: Path, flags: list[str], dest: Path) -> str | None:
    """Compile ``src`` into ``dest`` atomically; returns None or the compiler's error (one line)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.stem + ".", suffix=".tmp.so", dir=dest.parent)
    os.close(fd)
    try:
        cmd = [cc, *os.environ.get("CC", "cc").split()[1:], *flags, str(src), "-o", tmp, "-lm"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
            return (lines[0] if lines else f"exit status {p.returncode}")[:300]
        os.replace(tmp, dest)  # atomic: another process sees the old state or the whole file
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"[:300]
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(source: str | os.PathLike, *, openmp: bool = False, flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """Compile (once, cached) and load a C source as a shared library.

    Args:
        source: path of the ``.c`` file (shipped inside the plugin's package).
        openmp: build with ``-fopenmp`` when the compiler supports it (the kernel must compile
            without it too).
        flags: extra compiler flags (part of the cache key).

    Returns:
        The loaded ``ctypes.CDLL``, or None when kernels are disabled (``FULCRA_NATIVE=0``), no
        compiler is found, or the build or load fails; :func:`reason` then says why in one line.
    """
    src = Path(source)
    name = src.stem.lstrip("_") or "kernel"
    key = (str(src.resolve()), openmp, tuple(flags), enabled(), os.environ.get("CC"), str(cache_dir()))
    with _lock:
        if key not in _loaded:
            lib = _load_uncached(src, name, openmp, list(flags))
            _loaded[key] = (lib, _reasons.get(src.name, "") if lib is None else "")
        lib, why = _loaded[key]
        if lib is None:  # the reason of this load, whatever other loads (other settings) said since
            _reasons[src.name] = why
        else:
            _reasons.pop(src.name, None)
        return lib


_kernels: dict[tuple, ctypes.CDLL | None] = {}
_said: set[tuple[str, str]] = set()
_log = logging.getLogger("fulcra.native")


def kernel(
    source: str | os.PathLike,
    signatures: dict[str, list],
    *,
    what: str,
    fallback: str,
    openmp: bool = False,
    restype: Any = ctypes.c_int,
) -> ctypes.CDLL | None:
    """:func:`load` plus what every caller does next, for a plugin's hot path.

    Declares each function's ``argtypes`` (``signatures[name]``) and ``restype``; when the library
    is unavailable, logs one warning per reason, "``what`` unavailable (reason); using
    ``fallback``", and returns None. The
    answer is cached per source and per value of ``FULCRA_NATIVE``, ``CC`` and the cache folder's
    variables, without touching the file system, so it may be called for every batch.
    """
    env = tuple(os.environ.get(v) for v in ("FULCRA_NATIVE", "CC", "FULCRA_NATIVE_CACHE", "XDG_CACHE_HOME"))
    key = (str(source), openmp, env)
    if key in _kernels:
        return _kernels[key]
    lib = load(source, openmp=openmp)
    if lib is None:
        why = reason(source)
        if (str(source), why) not in _said:
            _said.add((str(source), why))
            _log.warning("%s unavailable (%s); using %s", what, why, fallback)
    else:
        for name, args in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = list(args), restype
    if len(_kernels) > 64:  # settings flipped back and forth (tests): keep the cache small
        _kernels.clear()
    _kernels[key] = lib
    return lib


def _load_uncached(src: Path, name: str, openmp: bool, extra: list[str]) -> ctypes.CDLL | None:
    if not enabled():
        _reasons[src.name] = "native kernels disabled by FULCRA_NATIVE=0"
        return None
    cc = compiler()
    if cc is None:
        _reasons[src.name] = f"no C compiler found ({os.environ.get('CC', 'cc')!r} is not on PATH; set CC)"
        return None
    try:
        text = src.read_bytes()
    except OSError as e:
        _reasons[src.name] = f"cannot read {src}: {e}"
        return None
    cid = _compiler_id(cc)
    tries = [_base_flags() + ["-fopenmp"] + extra] if openmp else []
    tries.append(_base_flags() + extra)
    err = None
    for fl in tries:
        h = hashlib.sha256(text + b"\0" + " ".join(fl).encode() + b"\0" + cid.encode()).hexdigest()[:20]
        dest = cache_dir() / f"{name}-{h}.so"
        if not dest.exists():
            err = _build(cc, src, fl, dest)
            if err is not None:
                continue
        try:
            lib = ctypes.CDLL(str(dest))
        except OSError as e:
            err = f"cannot load {dest}: {e}"
            continue
        lib._fulcra_flags = fl  # type: ignore[attr-defined]
        _reasons.pop(src.name, None)
        return lib
    _reasons[src.name] = f"compiling {src.name} failed: {err}"
    return None


def reason(source: str | os.PathLike) -> str:
    """Why the last :func:`load` of ``source`` returned None ('' if it did not)."""
    return _reasons.get(Path(source).name, "")


def ptr(array: Any, dtype: Any, name: str = "array") -> ctypes.c_void_p:
    """A pointer to the data of a C-contiguous NumPy array or CPU torch tensor of exactly ``dtype``.

    Raises:
        TypeError: wrong dtype, not contiguous, or not on the CPU (the kernel would read garbage).
    """
    import numpy as np

    if hasattr(array, "data_ptr"):  # torch tensor
        import torch

        if array.device.type != "cpu" or not array.is_contiguous():
            raise TypeError(f"native: {name} must be a contiguous CPU tensor")
        want = {
            np.float32: torch.float32,
            np.float64: torch.float64,
            np.int32: torch.int32,
            np.int64: torch.int64,
            np.uint8: torch.uint8,
            np.int16: torch.int16,
            np.float16: torch.float16,
        }
        if array.dtype != want.get(np.dtype(dtype).type):
            raise TypeError(f"native: {name} must be {np.dtype(dtype)}, got {array.dtype}")
        return ctypes.c_void_p(array.data_ptr())
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise TypeError(f"native: {name} must be a C-contiguous numpy array")
    if array.dtype != np.dtype(dtype):
        raise TypeError(f"native: {name} must be {np.dtype(dtype)}, got {array.dtype}")
    return ctypes.c_void_p(array.ctypes.data)
