"""fulcra.engine.Prefetcher and its users: what worker processes fetch ahead is what the loop
would have fetched itself (the same bytes, the same weights, exact resume), whatever the count."""

from __future__ import annotations

import os

import pytest
import torch

from fulcra.engine import DatasetImages, Prefetcher, Trainer, data_workers, image_batches
from fulcra.errors import ConfigError


class Squares:
    """fetch(k): a tensor from k; k == 7 fails; counts the calls made in this process."""

    def __init__(self):
        self.calls = 0

    def __call__(self, k):
        self.calls += 1
        if k == 7:
            raise KeyError(f"no item {k}")
        return {"k": torch.full((4,), float(k * k)), "pid": os.getpid()}


def test_values_in_plan_order_from_the_workers():
    f = Squares()
    with Prefetcher(f, range(6), workers=2, depth=2) as ahead:
        got = [ahead.take(k) for k in range(6)]
    assert [float(g["k"][0]) for g in got] == [k * k for k in range(6)]
    assert all(g["pid"] != os.getpid() for g in got)  # fetched by the workers, not here
    assert f.calls == 0 and ahead.hits == 6 and ahead.misses == 0


def test_a_key_off_the_plan_is_fetched_here_and_the_plan_goes_on():
    f = Squares()
    with Prefetcher(f, [0, 1, 2, 3], workers=1) as ahead:
        assert float(ahead.take(0)["k"][0]) == 0
        off = ahead.take(3)  # not the plan's next: computed in this process
        assert off["pid"] == os.getpid() and float(off["k"][0]) == 9
        assert [float(ahead.take(k)["k"][0]) for k in (1, 2, 3)] == [1, 4, 9]
    assert (ahead.hits, ahead.misses) == (4, 1)


def test_a_workers_exception_is_raised_as_is():
    with Prefetcher(Squares(), range(5, 9), workers=2) as ahead:
        ahead.take(5), ahead.take(6)
        with pytest.raises(KeyError, match="no item 7") as e:
            ahead.take(7)
        assert "Traceback" not in str(e.value)  # not DataLoader's rewrapped message
        assert float(ahead.take(8)["k"][0]) == 64


def test_no_workers_fetches_each_key_when_taken():
    f = Squares()
    ahead = Prefetcher(f, range(3), workers=0)
    assert f.calls == 0
    assert [float(ahead.take(k)["k"][0]) for k in range(3)] == [0, 1, 4] and f.calls == 3


def test_starting_workers_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    with Prefetcher(Squares(), range(3), workers=1) as ahead:
        ahead.take(0)
    assert torch.equal(before, torch.get_rng_state())


def test_close_stops_the_workers_and_later_takes_compute_here():
    f = Squares()
    ahead = Prefetcher(f, range(10), workers=2)
    ahead.take(0)
    procs = list(ahead._it._workers)
    ahead.close()
    assert all(not p.is_alive() for p in procs)
    assert ahead.take(1)["pid"] == os.getpid()


def test_spawned_workers_need_only_picklable_parts():
    imgs = (torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    view = DatasetImages(torch.utils.data.TensorDataset(imgs, torch.arange(10)), batch_size=3)
    with Prefetcher(view.__getitem__, [slice(0, 4), slice(4, 10)], workers=1, context="spawn") as ahead:
        assert torch.equal(ahead.take(slice(0, 4)), imgs[:4])
        assert torch.equal(ahead.take(slice(4, 10)), imgs[4:])


def test_image_batches_decoded_ahead_are_the_same():
    imgs = (torch.rand(37, 3, 6, 5, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    view = DatasetImages(torch.utils.data.TensorDataset(imgs, torch.zeros(37)), batch_size=4)
    serial = list(image_batches(view, 8))
    assert view.with_workers(2).workers == 2 and view.subset([1, 2]).workers == 0
    ahead = list(image_batches(view.with_workers(2), 8))
    ahead_sub = list(image_batches(view.with_workers(1).subset(range(3, 30)), 8))
    assert [b.shape[0] for b in ahead] == [8, 8, 8, 8, 5]
    assert torch.equal(torch.cat(serial), imgs) and torch.equal(torch.cat(ahead), imgs)
    assert torch.equal(torch.cat(ahead_sub), imgs[3:30])


def test_data_workers():
    assert data_workers(3, lazy=False) == 3 and data_workers("2", lazy=True) == 2
    assert data_workers("auto", lazy=False) == 0
    auto = data_workers("AUTO", lazy=True)
    assert 0 <= auto <= 8
    for bad in (-1, "many", 1.5, True):
        with pytest.raises(ConfigError, match="eval.data_workers must be auto or a non-negative integer"):
            data_workers(bad, lazy=True, field="eval.data_workers")


def test_auto_shares_the_cpus_among_local_ranks(monkeypatch):
    import fulcra.engine.prefetch as pf

    monkeypatch.setattr(pf, "usable_cpus", lambda: 16)
    assert data_workers("auto", lazy=True) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert data_workers("auto", lazy=True) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert data_workers("auto", lazy=True) == 0


# -- the Trainer ------------------------------------------------------------------------------


class Augmenting(torch.utils.data.Dataset):
    """An AugmentingDataset: per-sample noise from the step's data generator."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def augmented_batch(self, indices, generator):
        x = self.x[torch.as_tensor(indices)]
        return x + 0.05 * torch.randn(x.shape, generator=generator), self.y[torch.as_tensor(indices)]


class Stop(Exception):
    pass


class StopAt:
    def __init__(self, at):
        self.at = at

    def step(self, step, metrics, total=None, stage=None):
        if step == self.at:
            raise Stop

    def checkpoint(self, path, step):
        pass


def _train(data, workers, **kw):
    torch.manual_seed(0)  # same initial weights, same dropout stream
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))
    t = Trainer(
        model,
        data,
        lambda m, x, y: torch.nn.functional.cross_entropy(m(x), y),
        epochs=3,
        batch_size=8,
        lr=0.05,
        seed=5,
        workers=workers,
        batch_transform=lambda x, y, g: (x + 0.1 * torch.randn(x.shape, generator=g), y),
        **kw,
    )
    return t.fit().state_dict()


@pytest.fixture
def xy():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(44, 6, generator=g)
    return x, (x[:, 0] > 0).long()


@pytest.mark.parametrize("kind", ["tensor", "augmenting"])
def test_trainer_with_workers_reaches_the_same_weights(xy, kind):
    data = torch.utils.data.TensorDataset(*xy) if kind == "tensor" else Augmenting(*xy)
    a, b = _train(data, 0), _train(data, 2)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_trainer_with_workers_resumes_exactly(xy, tmp_path):
    data = Augmenting(*xy)
    ref = _train(data, 0)
    with pytest.raises(Stop):  # killed mid-epoch 2, past the checkpoint of step 10
        _train(data, 2, ckpt_path=tmp_path / "c.pt", ckpt_every=5, hooks=StopAt(13))
    resumed = _train(data, 1, ckpt_path=tmp_path / "c.pt", ckpt_every=5)
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k


def test_trainer_refuses_negative_workers(xy):
    with pytest.raises(ValueError, match="workers >= 0"):
        Trainer(torch.nn.Linear(6, 2), torch.utils.data.TensorDataset(*xy), None, workers=-1)


class DiesAt:
    def __init__(self, at):
        self.at = at

    def __call__(self, k):
        if k == self.at:
            os.kill(os.getpid(), 9)  # as the kernel's OOM killer would
        return torch.zeros(2)


def test_a_killed_worker_is_a_one_line_error():
    from fulcra.errors import WorkerDiedError

    with Prefetcher(DiesAt(2), range(6), workers=1, depth=1) as ahead:
        ahead.take(0)
        with pytest.raises(WorkerDiedError, match="worker process fetching data ahead died .* fewer data_workers"):
            for k in range(1, 6):
                ahead.take(k)
    assert ahead.take(5).shape == (2,)  # closed: what is taken after is fetched here
