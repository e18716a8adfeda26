import torch

from metarl.optim import (
    compute_gae,
    conjugate_gradient,
    discounted_returns,
    linear_baseline_values,
    normalize,
)


def test_gae_matches_hand_computation_with_zero_values():
    rewards = torch.tensor([0.0, 0.0, 1.0])
    zeros = torch.zeros(3)
    term = torch.tensor([False, False, True])
    adv = compute_gae(rewards, zeros, zeros, term, term, gamma=0.9, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([0.81, 0.9, 1.0]))


def test_gae_termination_versus_truncation_by_hand():
    # Two episodes back to back: the first truncated at t=1 (bootstrap V(s')=2),
    # the second terminated at t=3 (no bootstrap).
    r = torch.tensor([1.0, 1.0, 1.0, 1.0])
    v = torch.tensor([0.5, 0.5, 0.5, 0.5])
    next_v = torch.tensor([0.5, 2.0, 0.5, 9.0])
    term = torch.tensor([False, False, False, True])
    done = torch.tensor([False, True, False, True])
    g, lam = 0.9, 0.5
    d1 = 1 + g * 2.0 - 0.5          # truncation bootstraps
    d0 = 1 + g * 0.5 - 0.5
    d3 = 1 - 0.5                    # termination does not
    d2 = 1 + g * 0.5 - 0.5
    expected = torch.tensor([d0 + g * lam * d1, d1, d2 + g * lam * d3, d3])
    torch.testing.assert_close(compute_gae(r, v, next_v, term, done, g, lam), expected)


def test_discounted_returns_respect_mask():
    r = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(discounted_returns(r, mask, 0.5), torch.tensor([[2.75, 3.5, 3.0, 0.0]]))


def test_linear_baseline_recovers_a_linear_function_of_its_features():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 3, 20, 2, generator=g)
    t = torch.arange(20.0) / 100
    target = 1.5 * obs[..., 0] - 0.5 * obs[..., 1] ** 2 + 2.0 * t + 0.3
    mask = torch.ones(2, 3, 20, dtype=torch.bool)
    mask[1, 2, 15:] = False
    values = linear_baseline_values(obs, target * mask, mask)
    torch.testing.assert_close(values[mask], target[mask], atol=1e-3, rtol=1e-3)
    assert (values[~mask] == 0).all()


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=20)
    torch.testing.assert_close(a @ x, b)
    # Stopped early, the tracked product is still A x of the (inexact) solution.
    x3, ax3 = conjugate_gradient(lambda v: a @ v, b, iters=3, return_product=True)
    assert not torch.allclose(a @ x3, b, atol=1e-3)
    torch.testing.assert_close(ax3, a @ x3)


def test_normalize_ignores_padding():
    adv = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(normalize(adv, mask), torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_conjugate_gradient_on_a_zero_right_hand_side_is_zero_not_nan():
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    x, ax = conjugate_gradient(lambda v: a @ v, torch.zeros(2), 10, return_product=True)
    assert torch.equal(x, torch.zeros(2)) and torch.equal(ax, torch.zeros(2))
    calls = []
    x = conjugate_gradient(lambda v: calls.append(v) or a @ v, torch.zeros(2), 10, residual_tol=0.0)
    assert torch.equal(x, torch.zeros(2)) and not calls  # no product, no division
    # The same solver still solves a random SPD system to tolerance.
    g = torch.Generator().manual_seed(1)
    m = torch.randn(8, 8, generator=g, dtype=torch.float64)
    spd = m @ m.T + 0.5 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: spd @ v, b, iters=50)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, torch.linalg.solve(spd, b), atol=1e-6, rtol=1e-6)


def test_conjugate_gradient_stops_at_an_exactly_zero_residual():
    # With A = 2 I the first step solves exactly (r = 0); with residual_tol = 0 the next
    # step would be p = 0 and alpha = 0 / 0.
    b = torch.tensor([1.0, -2.0, 0.5])
    x, ax = conjugate_gradient(lambda v: 2 * v, b, iters=5, residual_tol=0.0, return_product=True)
    assert torch.equal(x, b / 2) and torch.equal(ax, b)
