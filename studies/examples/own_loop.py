"""Escape statistics from your own PyTorch loop: grokking modular addition, one run at a time.

An ordinary training loop (an ``nn.Module`` MLP on per-operand embeddings, quadratic
activation, ``torch.optim.AdamW``, minibatches of a fixed 70% split of (a + b) mod p), NOT
escapestat's batched engine, across a few seeds and learning rates. Each run reports its
train and test accuracy to an ``EscapeMonitor`` every ``--eval-every`` steps; the escape
is test accuracy ≥ 0.95 (committed: it must not fall below 0.9 within ``--commit``
steps), the fit milestone train accuracy ≥ 0.99. Every run appends one row to
``OUT/escapes.csv`` (and ``OUT/run.json`` records the evaluation grid, ``check_every``,
for the KS tests), which the escapestat commands read as it is::

    python studies/examples/own_loop.py --out runs/own
    escapestat fit runs/own/escapes.csv --group-col lr
    escapestat regress runs/own/escapes.csv "log(lr)"
    escapestat report runs/own/escapes.csv --out runs/own/report.html

``--jobs N`` runs N processes at once, all appending to the one table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from escapestat.monitor._monitor import EscapeMonitor


class MLP(nn.Module):
    """logits = W (E_a[a] + E_b[b])², width ``width`` (Gromov's quadratic MLP)."""

    def __init__(self, p: int, width: int):
        super().__init__()
        self.embed_a, self.embed_b = nn.Embedding(p, width), nn.Embedding(p, width)
        self.out = nn.Linear(width, p, bias=False)
        for emb in (self.embed_a, self.embed_b):
            nn.init.normal_(emb.weight, std=2 ** -0.5)
        nn.init.normal_(self.out.weight, std=width ** -0.5)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        z = self.embed_a(pairs[:, 0]) + self.embed_b(pairs[:, 1])
        return self.out(z * z)


@torch.no_grad()
def accuracy(model: nn.Module, pairs: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(pairs).argmax(-1) == labels).float().mean().item()


def train_one(args: argparse.Namespace, lr: float, seed: int) -> str:
    """Train one run to ``--max-steps`` or its escape; the monitor writes its row."""
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(seed)
    p = args.p
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs, labels = torch.stack([a.flatten(), b.flatten()], 1), (a + b).flatten() % p
    order = torch.randperm(p * p, generator=gen)
    n_train = int(round(args.train_fraction * p * p))
    train, test = order[:n_train], order[n_train:]
    torch.manual_seed(seed)
    model = MLP(p, args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)

    monitor = EscapeMonitor(
        Path(args.out) / "escapes.csv", metric="test_accuracy", threshold=0.95, fallback=0.9,
        commit_steps=args.commit, fit_metric="train_accuracy", fit_threshold=0.99,
        fit_fallback=0.9, max_steps=args.max_steps, record=["train_loss"],
        lr=lr, weight_decay=args.weight_decay, batch_size=args.batch_size, seed=seed,
        width=args.width, task=f"add mod {p}", train_fraction=args.train_fraction,
        condition=f"lr={lr:g}, wd={args.weight_decay:g}, B={args.batch_size}")  # short label
    with monitor:
        batches = torch.empty(0, dtype=torch.long)
        for step in range(1, args.max_steps + args.commit + 1):
            if batches.numel() < args.batch_size:  # minibatches without replacement
                batches = train[torch.randperm(n_train, generator=gen)]
            idx, batches = batches[:args.batch_size], batches[args.batch_size:]
            loss = F.cross_entropy(model(pairs[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % args.eval_every == 0:
                monitor.update(step, train_loss=loss.item(),
                               train_accuracy=accuracy(model, pairs[train], labels[train]),
                               test_accuracy=accuracy(model, pairs[test], labels[test]))
                if monitor.done:  # escaped, diverged, or censored at max_steps
                    break
    return f"lr {lr:g} seed {seed}: {monitor.status} at {monitor.row['duration']:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for escapes.csv")
    parser.add_argument("--lr", type=float, nargs="+", default=[5e-3, 1e-2, 2e-2, 3e-2])
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0..N-1 per lr")
    parser.add_argument("--p", type=int, default=23)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--weight-decay", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-steps", type=int, default=600, help="censoring budget")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--commit", type=int, default=100, help="commit_steps")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--append", action="store_true",
                        help="add rows to an existing OUT/escapes.csv")
    args = parser.parse_args(argv)
    table = Path(args.out) / "escapes.csv"
    if table.exists() and not args.append:
        parser.error(f"{table} exists; pass --append to add rows to it, or another --out")
    # The durations sit on the evaluation grid; escapestat's KS tests read it from run.json.
    table.parent.mkdir(parents=True, exist_ok=True)
    table.with_name("run.json").write_text(json.dumps(
        {"written_by": "studies/examples/own_loop.py", "units": "steps",
         "check_every": args.eval_every, "max_steps": args.max_steps,
         "commit_steps": args.commit}, indent=1) + "\n")
    start = time.perf_counter()
    runs = list(itertools.product(args.lr, range(args.seeds)))
    # Saturated softmax underflows to denormals, ~100× slower on CPUs: flush them (the flag
    # is process-wide, numpy too, so it is reset afterwards).
    torch.set_flush_denormal(True)
    try:
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs, initializer=torch.set_flush_denormal,
                                     initargs=(True,)) as pool:
                lines = pool.map(train_one, itertools.repeat(args), *zip(*runs, strict=True))
                for line in lines:
                    print(line, file=sys.stderr)
        else:
            for lr, seed in runs:
                print(train_one(args, lr, seed), file=sys.stderr)
    finally:
        torch.set_flush_denormal(False)
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s -> {table}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
