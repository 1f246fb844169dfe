"""Cost of one SLACK search step and one re-training step vs one plain training step on the same
B_aug × N_t images (issue 3, item 8b; issue 15). The search step = augment B_aug × N_t images (one
augmentation per group, flip, Cutout last), forward (per-group BatchNorm), backward, each group's
gradient and its clipping (norm 5), the validation gradient at θ̂ (clipped), the B_aug REINFORCE
weights (default ``layerwise`` formulation), model and policy updates. The re-training step = the
same groups, one forward/backward pass per group, per-group clipping, averaged, model update. The
plain step = augment the same number of images (one augmentation per image), forward, backward,
model update. Interleaved repeats, medians, one process.

    .venv/bin/python benchmarks/bench_search_step.py --threads 1 --out bench_search_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="small_cnn,wrn_40_2")
    ap.add_argument("--b-aug", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import fulcra
    from fulcra.policy import Policy
    from fulcra_plugins.slack import Slack
    from fulcra_plugins.slack.common import MethodAugment, channel_mean

    n_img = args.b_aug * args.batch
    X = torch.randint(0, 256, (4 * n_img, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Y = torch.randint(0, 10, (X.shape[0],), generator=torch.Generator().manual_seed(1))
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = fulcra.create("students", name, num_classes=10).train()
        search = Slack(b_aug=args.b_aug, batch_size=args.batch)
        plain = Slack(b_aug=1, batch_size=n_img)
        policy = search.initial_policy()
        aug = MethodAugment(policy, policy.augmenter(), flip=True, cutout_last=True, fill=channel_mean(X))
        logits = policy.logits.clone().requires_grad_(True)
        mu = policy.mu.clone().requires_grad_(True)
        anchor = logits.detach().clone()
        upper = torch.optim.SGD([logits, mu], lr=1.0, momentum=0.9)
        opt, sched = search._lower_opt(model, 10**6)
        step = [0]

        def search_step():
            step[0] += 1
            cur = Policy(policy.ops, logits.detach(), mu.detach(), policy.ranges)
            search._bilevel_step(
                model,
                opt,
                sched,
                policy,
                cur,
                aug,
                logits,
                mu,
                anchor,
                upper,
                X,
                Y,
                X,
                Y,
                0,
                (3, 0, step[0]),
                0.1,
                torch.device("cpu"),
                1,
            )

        def plain_step():
            step[0] += 1
            plain._plain_step(model, opt, sched, policy, aug, X, Y, 0, (1, step[0]), torch.device("cpu"))

        def retrain_step():
            step[0] += 1
            cur = Policy(policy.ops, logits.detach(), mu.detach(), policy.ranges)
            search._retrain_step(model, opt, sched, cur, aug, X, Y, 0, (2, 0, step[0]), torch.device("cpu"))

        fns = {"search_step": search_step, "retrain_step": retrain_step, "plain_step": plain_step}
        for fn in fns.values():
            fn()
        ts = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                ts[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in ts.items()}
        row = {
            "model": name,
            "images": n_img,
            "b_aug": args.b_aug,
            "batch": args.batch,
            "threads": args.threads,
            "seconds": med,
            "ratio_search_over_plain": med["search_step"] / med["plain_step"],
            "ratio_retrain_over_plain": med["retrain_step"] / med["plain_step"],
        }
        rows.append(row)
        print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
