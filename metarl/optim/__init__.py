"""Shared numerical pieces: advantages, the linear feature baseline, conjugate gradient,
running moments."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def compute_gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor,
                dones: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al., 2016), over the last dim.

    Shapes: all (..., T).

    Args:
        rewards: r_t.
        values: V(s_t).
        next_values: V(s_{t+1}) of the state actually reached after step t, also at a
            time-limit truncation (bootstrap); ignored where ``terminated``.
        terminated: True where the episode truly ended at t (no bootstrap).
        dones: True where the recursion stops at t: an episode boundary (termination or
            truncation) or padding.
    """
    not_term = 1.0 - terminated.float()
    not_done = 1.0 - dones.float()
    deltas = rewards + gamma * not_term * next_values - values
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = deltas[..., t] + gamma * lam * not_done[..., t] * running
        adv[..., t] = running
    return adv


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go within each padded episode. Shapes: (..., T) -> (..., T)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def linear_baseline_values(obs: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5) -> Tensor:
    """Fit and evaluate the linear feature baseline of the MAML/garage line of work.

    Features per step: obs, obs^2 (obs clipped to [-10, 10]), t/100, its square and cube,
    and 1. A ridge regression onto the returns is fitted per leading index (per task),
    with the regulariser raised tenfold while the solve is not finite.

    Shapes: obs (N, E, T, O), returns and mask (N, E, T) -> values (N, E, T).
    """
    n, e, t, _ = obs.shape
    o = obs.clamp(-10, 10)
    al = (torch.arange(t, dtype=obs.dtype, device=obs.device) / 100.0).view(1, 1, t, 1).expand(n, e, t, 1)
    feats = torch.cat([o, o * o, al, al * al, al ** 3, torch.ones_like(al)], dim=-1)
    w = mask.unsqueeze(-1).to(obs.dtype)
    x = (feats * w).reshape(n, e * t, -1).double()
    y = (returns * mask).reshape(n, e * t, 1).double()
    xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
    for _ in range(5):
        coef = torch.linalg.solve(xtx + reg * eye, xty)
        if torch.isfinite(coef).all():
            break
        reg *= 10
    return (feats.reshape(n, e * t, -1).double() @ coef).reshape(n, e, t).to(obs.dtype) * mask


def conjugate_gradient(avp: Callable[[Tensor], Tensor], b: Tensor, iters: int,
                       residual_tol: float = 1e-10, return_product: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``.

    With ``return_product``, also returns ``A x`` as the iteration tracks it (``b`` minus
    the final residual), which saves the product a caller would otherwise spend on it.
    A zero residual never reaches a division: ``b = 0`` gives ``x = 0`` (not 0 / 0 = NaN),
    and the iteration stops once ``r @ r <= residual_tol`` (also for ``residual_tol = 0``).
    """
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    if rr == 0:  # b = 0: x = 0 solves it (and p @ A p would be 0 / 0 below)
        return (x, torch.zeros_like(b)) if return_product else x
    for _ in range(iters):
        ap = avp(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        if rr_new <= residual_tol:  # with residual_tol = 0, an exact solve would give p = 0 next
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return (x, b - r) if return_product else x


def normalize(adv: Tensor, mask: Tensor, dims: tuple[int, ...] = (-2, -1), eps: float = 1e-8) -> Tensor:
    """Centre and scale ``adv`` over ``dims`` using only the valid (masked) entries."""
    w = mask.to(adv.dtype)
    count = w.sum(dims, keepdim=True).clamp_min(1)
    mean = (adv * w).sum(dims, keepdim=True) / count
    var = (((adv - mean) * w) ** 2).sum(dims, keepdim=True) / count
    return (adv - mean) / (var.sqrt() + eps) * w


def welford(stats: Tensor, values: Tensor) -> Tensor:
    """Running moments merged with a batch (Chan et al.'s parallel form of Welford's update).

    ``stats`` (3, *F) float64: count, mean and sum of squared deviations per feature (zeros
    before any data); ``values`` (M, *F), or any shape for scalar stats (3,). Returns the
    merged (3, *F); the variance is M2 / (count - 1).
    """
    v = values.double().reshape(-1, *stats.shape[1:])
    count, mean, m2 = stats
    n = v.shape[0]
    m = v.mean(0)
    total = count + n
    delta = m - mean
    m2 = m2 + (((v - m) ** 2).sum(0) + delta * delta * count * n / total)
    return torch.stack([total, mean + delta * n / total, m2])
