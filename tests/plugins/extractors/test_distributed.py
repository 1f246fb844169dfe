"""Sharding under a real 2-process gloo group: each rank reads its views, PCA statistics meet in one
all-reduce, every rank ends with the basis a single process fits over all views."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("timm")

KW = dict(variant="vits14_reg", tiny=True, n_components=3, resolution=28, crop_size=28, stride=14)


def _views():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 20, 24, generator=g) for _ in range(5)]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    import torch.distributed as tdist

    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from fulcra_plugins.extractors.common import extract_views
        from fulcra_plugins.extractors.dinov2 import DINOv2Extractor

        e = DINOv2Extractor(**KW)
        maps = extract_views(e, _views(), shard=True, show_progress=False)  # fits the PCA first
        torch.save(
            {"components": e.pca.components, "eigenvalues": e.pca.eigenvalues, "maps": maps}, f"{out_dir}/rank{rank}.pt"
        )
    finally:
        tdist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dinov2_pca_and_views_shard_across_processes(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    from fulcra_plugins.extractors.common import extract_views
    from fulcra_plugins.extractors.dinov2 import DINOv2Extractor

    single = DINOv2Extractor(**KW)
    ref = extract_views(single, _views(), show_progress=False)
    seen = {}
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert torch.allclose(res["eigenvalues"], single.pca.eigenvalues, rtol=1e-4)
        assert torch.allclose(res["components"], single.pca.components, atol=1e-4)
        seen.update(res["maps"])
        assert sorted(res["maps"]) == list(range(r, 5, 2))
    assert sorted(seen) == list(range(5))
    for i, m in seen.items():
        assert torch.allclose(m, ref[i], atol=1e-4)
