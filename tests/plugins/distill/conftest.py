"""One intra-op thread for these tests: their tensors are tiny, so on a shared 2-core machine a second
thread costs more in synchronisation than it computes (measured: 5x slower under load)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
