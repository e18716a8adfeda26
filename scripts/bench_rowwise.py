"""The sampler's row-wise policy forward against one matrix product over the rows.

For a Gaussian MLP policy of each width (obs 39, 4 actions, as on Meta-World), prints as
JSON, for 1, 10, 16 and 64 rows: microseconds per call of the module's forward (one
product over the rows) and of ``GaussianMLPPolicy.rowwise()`` (each row its own product),
and for each how many row counts 1-16 gave some row other bits than that row alone does
(``rows_that_move``: the one product's dependence on the row count on this machine; the
row-wise forward must give 0).

    python scripts/bench_rowwise.py [--hidden 512 512] [--repeats 300]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from metarl.policies import GaussianMLPPolicy


def per_call_us(f, x: torch.Tensor, repeats: int) -> float:
    for _ in range(20):
        f(x)
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(x)
    return (time.perf_counter() - t0) / repeats * 1e6


def rows_that_move(f, obs: torch.Tensor) -> int:
    """How many row counts m in 1..16 give some row of obs[s:s+m] other bits than alone."""
    alone = torch.cat([f(obs[i:i + 1].clone()) for i in range(len(obs))])
    return sum(any(not torch.equal(f(obs[s:s + m]), alone[s:s + m]) for s in range(0, 20, 3)) for m in range(1, 17))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="+", action="append", help="repeatable; default 512 512 and 64 64")
    ap.add_argument("--repeats", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a sampler worker
    torch.manual_seed(0)
    out = {}
    for hidden in args.hidden or [[512, 512], [64, 64]]:
        policy = GaussianMLPPolicy(39, 4, hidden).requires_grad_(False)
        rowwise = policy.rowwise()
        ways = {"one_product": lambda x, p=policy: p(x)[0], "rowwise": lambda x, r=rowwise: r(x)[0]}
        obs = torch.randn(40, 39)
        out["x".join(map(str, hidden))] = {
            name: {"us_per_call": {m: round(per_call_us(f, torch.randn(m, 39), args.repeats), 1)
                                   for m in (1, 10, 16, 64)},
                   "rows_that_move": rows_that_move(f, obs)}
            for name, f in ways.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
