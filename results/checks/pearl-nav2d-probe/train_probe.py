"""Supervised probe: can PEARL's context encoder represent the nav2d goal?

Reuses metarl.algos.pearl: the encoder is metarl.policies.mlp(context_dim, [128,128], 2L)
(nav2d.yaml sizes), factors N(mu, softplus(pre_var).clamp_min(MIN_FACTOR_VARIANCE)),
combined with pearl.product_of_gaussians (unit prior), KL via pearl.kl_to_standard_normal;
pogr1 / pogr2: factors whose precision also has a rank-1 / rank-2 term, combined with
pearl.product_of_low_rank_gaussians (algo.factor_rank=1 / 2).
Context = (s, a_ctx, r) raw (PEARL scales reward only in the Q target), s' appended only
for the *_nxt variants (use_next_obs_in_context).

usage: train_probe.py BEH MODEL[,MODEL...] [--steps N]
"""
import argparse, time
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from metarl.algos.pearl import (MIN_FACTOR_VARIANCE, kl_to_standard_normal, product_of_gaussians,
                               product_of_low_rank_gaussians)
from metarl.policies import mlp

p = argparse.ArgumentParser()
p.add_argument("beh"); p.add_argument("models"); p.add_argument("--steps", type=int, default=1000)
p.add_argument("--ctx", default="c64x2,c100x1"); p.add_argument("--lr", type=float, default=1e-3)
args = p.parse_args()
torch.set_num_threads(1)
D = np.load(str(__import__("pathlib").Path(__file__).with_name("data.npz")))
L, B = 5, 32


def load(split):
    return torch.tensor(D[f"{split}_{args.beh}"]), torch.tensor(D[f"{split}_goal"])


Etr, Gtr = load("train"); Ete, Gte = load("test")


def contexts(E, idx, kind, g):
    """(len(idx), M, 7) contexts: c100x1 = one full episode; c64x2 = 64 transitions drawn
    with replacement from two distinct episodes (PEARL's encoder-buffer sample), time-sorted."""
    n, K = len(idx), E.shape[1]
    if kind == "c100x1":
        k = torch.randint(K, (n,), generator=g)
        return E[idx, k]
    k1 = torch.randint(K, (n,), generator=g)
    k2 = (k1 + 1 + torch.randint(K - 1, (n,), generator=g)) % K
    two = torch.cat([E[idx, k1], E[idx, k2]], 1)            # (n, 200, 7)
    j = torch.sort(torch.randint(200, (n, 64), generator=g), 1).values
    return two[torch.arange(n)[:, None], j]


class Probe(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name
        self.cdim = 7 if name.endswith("_nxt") else 5
        agg = name.split("_")[0]
        self.agg, self.head_kind = agg, name.split("_")[1]
        if agg == "gru":
            self.rnn = nn.GRU(self.cdim, 64, batch_first=True)
            self.head = nn.Linear(64, 2)
            return
        out = {"pog": 2 * L, "pogr1": 3 * L, "pogr2": 4 * L}.get(agg, L)
        self.encoder = mlp(self.cdim, [128, 128], out)
        self.head = nn.Linear(L, 2) if self.head_kind.startswith("lin") else mlp(L, [64], 2)

    def forward(self, ctx, sample=False):
        ctx = ctx[..., :self.cdim]
        if self.agg == "gru":
            return self.head(self.rnn(ctx)[1][0]), None
        if self.agg == "mean":
            return self.head(self.encoder(ctx).mean(-2)), None
        if self.agg.startswith("pogr"):
            return self._lowrank(ctx, sample)
        mu, pre_var = self.encoder(ctx).split(L, -1)
        mean, var = product_of_gaussians(mu, F.softplus(pre_var).clamp_min(MIN_FACTOR_VARIANCE))
        z = mean + var.sqrt() * torch.randn_like(mean) if sample else mean
        return self.head(z), kl_to_standard_normal(mean, var).sum()


    def _lowrank(self, ctx, sample):
        # pogrR: each factor's precision diag + U U^T with U of rank R (algo.factor_rank=R)
        out = self.encoder(ctx)
        rank = int(self.agg[4:])
        q = product_of_low_rank_gaussians(out[..., :L], F.softplus(out[..., L:2 * L]).clamp_min(MIN_FACTOR_VARIANCE),
                                          out[..., 2 * L:].unflatten(-1, (L, rank)))
        z = q.sample(torch.randn_like(q.mean)) if sample else q.mean
        return self.head(z), q.kl().sum()


def r2(pred, goal):
    return 1 - ((pred - goal) ** 2).sum().item() / ((goal - goal.mean(0)) ** 2).sum().item()


@torch.no_grad()
def evaluate(model, E, G, kind, draws=2):
    g = torch.Generator().manual_seed(7)
    idx = torch.arange(len(G))
    preds = torch.cat([model(contexts(E, idx, kind, g))[0] for _ in range(draws)])
    return r2(preds, G.repeat(draws, 1))


for kind in args.ctx.split(","):
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = Probe(name)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        g = torch.Generator().manual_seed(1)
        t0, use_kl = time.time(), name.split("_")[1] == "linkl"
        for step in range(args.steps):
            idx = torch.randint(len(Gtr), (B,), generator=g)
            pred, kl = model(contexts(Etr, idx, kind, g), sample=use_kl)
            loss = F.mse_loss(pred, Gtr[idx])
            if use_kl:   # PEARL: kl_weight * KL summed over the meta-batch's tasks
                loss = loss + 0.01 * kl
            opt.zero_grad(); loss.backward(); opt.step()
            if step == args.steps // 2:
                mid = evaluate(model, Ete, Gte, kind)
        print(f"{args.beh:6s} {kind:7s} {name:14s} steps={args.steps} "
              f"R2 test={evaluate(model, Ete, Gte, kind):.3f} (half-budget {mid:.3f}) "
              f"train={evaluate(model, Etr, Gtr, kind):.3f}  {time.time() - t0:.0f}s", flush=True)
