"""Engine: statistics, schedules, samplers, atomic checkpoints, SIGKILL-and-resume, 2-process DDP
(with and without prefetching workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fulcra.engine import (
    EpochSampler,
    atomic_save,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    mean_ci,
    rng_state,
    select_device,
    set_rng_state,
)
from fulcra.errors import ConfigError, FormatError

HERE = Path(__file__).resolve().parent


def test_mean_ci_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for vals in ([0.9, 0.92, 0.91], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 4):
        r = mean_ci(vals)
        lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=r["mean"], scale=stats.sem(vals))
        assert r["ci95"] == pytest.approx((hi - lo) / 2, rel=2e-3)
    assert mean_ci([0.5])["ci95"] == 0.0


def test_cosine_schedule_with_warmup():
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", lr=1.0)
    sched = make_scheduler(opt, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 0.05
    with pytest.raises(ConfigError):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], "lbfgs")


def test_epoch_sampler_shards_cover_everything_once():
    full = EpochSampler(10, seed=3).indices()
    assert sorted(full) == list(range(10))
    a, b = EpochSampler(10, seed=3, rank=0, world_size=2), EpochSampler(10, seed=3, rank=1, world_size=2)
    assert sorted(a.indices() + b.indices()) == list(range(10)) and len(a) == 5
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    assert s.indices() != full


def test_atomic_save_and_safe_load(tmp_path):
    p = tmp_path / "c.pt"
    atomic_save({"w": torch.ones(2), "rng": rng_state()}, p)
    state = load_checkpoint(p)
    set_rng_state(state["rng"])
    assert torch.equal(state["w"], torch.ones(2))
    assert not list(tmp_path.glob(".*tmp"))
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(FormatError, match="c.pt"):
        load_checkpoint(p)


def test_rng_state_round_trip():
    import random

    import numpy as np

    s = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(s)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_select_device():
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")


def _run_job(ckpt, out, slow=False):
    args = [sys.executable, str(HERE / "_train_job.py"), str(ckpt), str(out)] + (["--slow"] if slow else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def test_sigkill_and_resume_gives_identical_weights(tmp_path):
    ref = _run_job(tmp_path / "ref.pt", tmp_path / "ref_w.pt")
    assert ref.wait(timeout=120) == 0
    proc = _run_job(tmp_path / "ck.pt", tmp_path / "w.pt", slow=True)
    seen = 0
    for line in proc.stdout:  # kill after the second checkpoint, mid-epoch
        if line.startswith("checkpoint"):
            seen += 1
            if seen == 2:
                break
    time.sleep(0.12)  # a step or two past the checkpoint: their work is lost and must be redone
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "w.pt").exists()
    state = load_checkpoint(tmp_path / "ck.pt")
    assert 0 < state["step"] < 48
    again = _run_job(tmp_path / "ck.pt", tmp_path / "w.pt")
    assert again.wait(timeout=120) == 0
    a, b = torch.load(tmp_path / "ref_w.pt", weights_only=True), torch.load(tmp_path / "w.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _ddp_worker(rank, world, port, out):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    from _train_job import build, loss_fn

    from fulcra.engine import Trainer, dist

    assert dist.init_distributed("gloo")
    model, data = build()
    model = torch.nn.Sequential(*[m for m in model if not isinstance(m, torch.nn.Dropout)])
    Trainer(model, data, loss_fn, epochs=2, batch_size=8, lr=0.05, seed=7).fit()
    # the same DDP training with each rank's batches fetched ahead by a worker process
    ahead, _ = build()
    ahead = torch.nn.Sequential(*[m for m in ahead if not isinstance(m, torch.nn.Dropout)])
    Trainer(ahead, data, loss_fn, epochs=2, batch_size=8, lr=0.05, seed=7, workers=1).fit()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce_sum(t)
    torch.save({"state": model.state_dict(), "ahead": ahead.state_dict(), "sum": t}, f"{out}/rank{rank}.pt")
    dist.destroy()


def test_two_process_ddp_matches_single_process_large_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    sys.path.insert(0, str(HERE))
    from _train_job import build, loss_fn

    from fulcra.engine import Trainer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["sum"].item() == 3.0
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks disagree on {k}"
        assert torch.equal(r0["state"][k], r0["ahead"][k]), f"prefetching workers changed {k}"
    # one process with twice the batch sees the same samples per step: same weights up to summation order
    model, data = build()
    model = torch.nn.Sequential(*[m for m in model if not isinstance(m, torch.nn.Dropout)])
    Trainer(model, data, loss_fn, epochs=2, batch_size=16, lr=0.05, seed=7).fit()
    for k, v in model.state_dict().items():
        assert torch.allclose(v, r0["state"][k], atol=1e-5), k


def test_over_seeds_resumes_finished_seeds(tmp_path):
    from fulcra.engine import over_seeds

    calls = []

    def fn(seed):
        calls.append(seed)
        if seed == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # killed during the third seed
        return {"score": float(seed), "extra": seed * 2}

    with pytest.raises(KeyboardInterrupt):
        over_seeds(fn, [0, 1, 2], tmp_path / "s.json")
    res = over_seeds(fn, [0, 1, 2], tmp_path / "s.json")
    assert calls == [0, 1, 2, 2] and res["mean"] == 1.0 and res["per_seed"]["2"]["extra"] == 4


def test_an_interval_over_one_seed_is_not_zero():
    from fulcra.engine import format_mean_ci, mean_ci

    assert format_mean_ci(mean_ci([0.9])) == "90.00 ± n/a"
    assert format_mean_ci(mean_ci([0.9, 0.92]), digits=1).startswith("91.0 ± ") and "n/a" not in format_mean_ci(
        mean_ci([0.9, 0.92])
    )
