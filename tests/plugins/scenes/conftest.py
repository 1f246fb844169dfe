import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # the rasteriser's small blocks gain nothing from intra-op threads, and on a shared 2-core
    # machine OpenMP wake-ups under contention cost 10x; tests run single-threaded
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
