"""Shared test configuration: a --device option, gpu/slow markers, small thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One intra-op thread for the whole suite: test tensors are tiny, and on a 2-core machine a second
# thread costs more in synchronisation than it computes (measured 5-10x slower under load). Tests
# that need more threads (benchmark-like checks) set them themselves. FULCRA_TEST_THREADS overrides
# it, so that CI can run the thread-sensitive suites (ops, policies) with 2 threads too.
torch.set_num_threads(int(os.environ.get("FULCRA_TEST_THREADS", "1")))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for tests that accept one (cpu or cuda)")
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or "slow" in (config.getoption("-m") or "")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --run-slow"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))


@pytest.fixture
def device(request) -> torch.device:
    spec = request.config.getoption("--device")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    return torch.device(spec)


EXAMPLE_PLUGIN = Path(__file__).resolve().parent / "example_plugin"


@pytest.fixture
def example(tmp_path):
    """The example third-party distribution (tests/example_plugin) installed for one test: its entry
    points and modules on a temporary site path, exactly as pip would register them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    from fulcra.testing import fake_distribution

    meta = tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())
    src = EXAMPLE_PLUGIN / "src"
    modules = {str(p.relative_to(src)): p.read_text() for p in src.rglob("*.py")}
    with fake_distribution(tmp_path / "site", "fulcra-example", meta["project"]["entry-points"], modules) as root:
        yield root
