"""SLACK under torch.distributed (gloo, 2 CPU processes): each process trains its own model, the policy
gradients are averaged, so both end with the same policy — one that differs from a single process'."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from fulcra.engine import dist
    from fulcra.interfaces import RunContext
    from fulcra_plugins.data import Digits
    from fulcra_plugins.slack import Slack
    from fulcra_plugins.slack.models import SmallCNN

    class H:
        def step(self, **k): pass
        def checkpoint(self, **k): pass
        def evaluate(self, **k): pass

    dist.init_distributed("gloo")
    s = Digits(size=12, seed=0).splits()
    sl = Slack(space="cifar", pretrain_steps=4, rounds=1, retrain_steps=2, unrolled_steps=3, batch_size=8, b_aug=2,
               upper_lr=50.0, checkpoint_every=100)
    p = sl.search(s["train"], s["val"], lambda: SmallCNN(10, 4),
                  RunContext(out=sys.argv[1], device=torch.device("cpu"), hooks=H(), rank=dist.rank(),
                             world_size=dist.world_size()))
    json.dump({"logits": p.logits.tolist(), "mu": p.mu.tolist()}, open(sys.argv[2], "w"))
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_one_policy(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    port = _free_port()
    procs = []
    for r in range(2):
        env = dict(
            os.environ,
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "out"), str(tmp_path / f"r{r}.json")], env=env
            )
        )
    for p in procs:
        assert p.wait(timeout=300) == 0
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single"), str(tmp_path / "s.json")],
        env=dict(os.environ, WORLD_SIZE="1", OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert single.returncode == 0
    r0, r1, s = (json.loads((tmp_path / f).read_text()) for f in ("r0.json", "r1.json", "s.json"))
    assert r0 == r1  # averaged policy gradients keep the processes' policies identical
    assert r0["logits"] != s["logits"]  # and the ensemble's policy is not the single process' one
    assert (tmp_path / "out" / "search" / "state_rank1.pt").is_file()  # each process its own model
