"""fulcra.native: compile-once cache, atomic builds, the FULCRA_NATIVE=0 switch, clear failures."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fulcra import native

SRC = textwrap.dedent(
    """
    #include <stdint.h>
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    void axpy(int64_t n, float a, const float *x, float *y, int nthreads) {
    #ifdef _OPENMP
    #pragma omp parallel for num_threads(nthreads)
    #endif
        for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
    }
    int has_openmp(void) {
    #ifdef _OPENMP
        return 1;
    #else
        return 0;
    #endif
    }
    """
)

needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


@pytest.fixture
def src(tmp_path, monkeypatch):
    monkeypatch.setenv("FULCRA_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FULCRA_NATIVE", raising=False)
    p = tmp_path / "_axpy.c"
    p.write_text(SRC)
    return p


@needs_cc
def test_compiles_once_and_runs(src, tmp_path):
    lib = native.load(src, openmp=True)
    assert lib is not None, native.reason(src)
    lib.axpy.argtypes = [ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    x = np.arange(1000, dtype=np.float32)
    y = np.ones(1000, dtype=np.float32)
    lib.axpy(1000, 2.0, native.ptr(x, np.float32), native.ptr(y, np.float32), 2)
    np.testing.assert_array_equal(y, 1 + 2 * x)
    t = torch.zeros(1000)
    lib.axpy(1000, 1.0, native.ptr(x, np.float32), native.ptr(t, np.float32), 1)
    assert torch.equal(t, torch.from_numpy(x))
    built = sorted((tmp_path / "cache").glob("*.so"))
    assert len(built) == 1 and built[0].name.startswith("axpy-")
    assert not list((tmp_path / "cache").glob("*.tmp*"))  # no temporary left behind
    mtime = built[0].stat().st_mtime_ns
    native._loaded.clear()  # as a new process would: the cached file is reused, not rebuilt
    assert native.load(src, openmp=True) is not None
    assert built[0].stat().st_mtime_ns == mtime
    src.write_text(SRC + "\n/* changed */\n")  # another source -> another cache entry
    native._loaded.clear()
    assert native.load(src, openmp=True) is not None
    assert len(list((tmp_path / "cache").glob("*.so"))) == 2


@needs_cc
def test_concurrent_first_use_from_several_processes(src, tmp_path):
    # the module alone (importing the fulcra package would import torch in every process)
    code = (
        "import sys, importlib.util as u; s = u.spec_from_file_location('n', sys.argv[2]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); lib = m.load(sys.argv[1], openmp=True); "
        "print(lib is not None and lib.has_openmp() in (0, 1))"
    )
    env = {**__import__("os").environ, "FULCRA_NATIVE_CACHE": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(src), native.__file__], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ["True"] * 4
    assert len(list((tmp_path / "cache").glob("*.so"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_disabled_by_env(src, monkeypatch):
    monkeypatch.setenv("FULCRA_NATIVE", "0")
    assert native.load(src) is None
    assert "FULCRA_NATIVE=0" in native.reason(src)
    assert not native.enabled()


def test_no_compiler_is_a_reason_not_an_error(src, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/fulcra-cc")
    assert native.load(src) is None
    assert "no C compiler" in native.reason(src) and "fulcra-cc" in native.reason(src)


@needs_cc
def test_compile_error_is_one_line(src):
    src.write_text("this is not C\n")
    assert native.load(src) is None
    why = native.reason(src)
    assert why.startswith("compiling _axpy.c failed:") and "\n" not in why


def test_ptr_checks_dtype_contiguity_and_device():
    a = np.zeros((4, 3), dtype=np.float32)
    assert native.ptr(a, np.float32).value == a.ctypes.data
    with pytest.raises(TypeError, match="float64"):
        native.ptr(a, np.float64, "pos")
    with pytest.raises(TypeError, match="contiguous"):
        native.ptr(a[:, 1], np.float32)
    with pytest.raises(TypeError, match="int32"):
        native.ptr(torch.zeros(3), np.int32)
    with pytest.raises(TypeError, match="contiguous"):
        native.ptr(torch.zeros(3, 4).t(), np.float32)
    img = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)  # images: the augment kernels' dtype
    assert native.ptr(img, np.uint8).value == img.data_ptr()
    with pytest.raises(TypeError, match="uint8"):
        native.ptr(img.float(), np.uint8)


def _threads_in_child(q):
    q.put(native.threads())


def test_threads_is_one_in_a_forked_child(monkeypatch):
    # libgomp's pool does not survive fork(): kernels in a forked worker must not start a team
    import multiprocessing as mp

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert native.threads() == 2
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_threads_in_child, args=(q,), daemon=True)
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert q.get(timeout=5) == 1
    finally:
        torch.set_num_threads(before)


@needs_cc
def test_kernel_declares_signatures_and_announces_a_fallback_once(src, monkeypatch, tmp_path, caplog):
    sig = {"axpy": [ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]}
    lib = native.kernel(src, sig, what="test: axpy kernel", fallback="numpy", openmp=True)
    assert lib is not None, native.reason(src)
    assert lib.axpy.argtypes == sig["axpy"] and lib.axpy.restype is ctypes.c_int
    x, y = np.arange(8, dtype=np.float32), np.zeros(8, dtype=np.float32)
    lib.axpy(8, 3.0, native.ptr(x, np.float32), native.ptr(y, np.float32), 1)  # the float went through as float
    np.testing.assert_array_equal(y, 3 * x)
    assert native.kernel(src, sig, what="test: axpy kernel", fallback="numpy", openmp=True) is lib  # cached
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))  # a new setting: loaded afresh, and fails
    with caplog.at_level("WARNING"):
        for _ in range(3):
            assert native.kernel(src, sig, what="test: axpy kernel", fallback="numpy") is None
    said = [r.getMessage() for r in caplog.records if "axpy kernel" in r.getMessage()]
    assert len(said) == 1 and "no C compiler" in said[0] and said[0].endswith("using numpy")
