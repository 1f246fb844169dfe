"""Prints one digest of every bundled op's output (batched and image by image, two sizes, uint8 and
float) and of a composite policy step. Run in subprocesses under different CPU code paths and thread
counts by ``test_machine_independence.py``: the digests must be equal."""

import hashlib
import sys

import torch

from fulcra_plugins.augment import BUILTIN_OPS, CompositeAugment, build_ops


def _images(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)
    x[1] = x[1] // 4 + 60
    return x


def digest(threads: int) -> str:
    torch.set_num_threads(threads)
    h = hashlib.sha256()
    for b, hh, ww in ((7, 23, 29), (3, 96, 112)):
        x = _images(b, hh, ww, hh)
        for name in sorted(BUILTIN_OPS):
            op = BUILTIN_OPS[name]()
            params = op.sample_params(x, torch.linspace(0, 1, b), torch.Generator().manual_seed(1))
            outs = [op.apply_params(x, params)]
            outs += [op.apply_params(x[i : i + 1], {k: v[i : i + 1] for k, v in params.items()}) for i in range(b)]
            outs.append(op.apply_params(x.float() / 255, params))
            for o in outs:
                h.update(name.encode())
                h.update(o.contiguous().numpy().tobytes())
        names = sorted(BUILTIN_OPS)
        g = torch.Generator().manual_seed(5)
        idx = torch.randint(0, len(names), (b * 4, 2), generator=g)
        mags = torch.rand(b * 4, 2, generator=g)
        out = CompositeAugment(build_ops(names))(x.repeat(4, 1, 1, 1), idx, mags, g)
        h.update(out.numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    print(digest(int(sys.argv[1]) if len(sys.argv) > 1 else 1))
