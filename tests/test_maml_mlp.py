"""The closed-form MAML products on the MLP policy against torch.func on the same learner."""

from functools import partial

import pytest
import torch
from test_maml import random_batch
from torch.func import grad, jvp, vjp, vmap

from metarl.algos import MamlConfig
from metarl.algos.maml import MamlLearner, _flat, prepare
from metarl.algos.maml_mlp import MlpMamlProducts, supports
from metarl.policies import GaussianMLPPolicy


def _double(batch):
    return type(batch)(**{k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                          for k, v in vars(batch).items()})


def check_products(lrn: MamlLearner, pre, post, close) -> tuple[MlpMamlProducts, dict, tuple]:
    """Each closed-form product against torch.func's on the same learner and data, as
    ``close(closed_form, torch_func)``; returns the products, the tangent ``v`` of the JVP and
    torch.func's adapted policy (mean, std)."""
    theta = lrn._theta()
    adapt = partial(lrn.adapt_all, steps=[pre])
    phi, vjp_fn = vjp(adapt, theta)
    phi = {k: v.detach() for k, v in phi.items()}
    old = lrn.forward_all(phi, post.obs)
    products = MlpMamlProducts(lrn.policy, theta, pre, post, lrn.cfg.inner_lr)
    g = torch.Generator().manual_seed(3)
    v = {k: torch.randn(x.shape, generator=g, dtype=x.dtype) for k, x in theta.items()}
    u = {k: torch.randn(x.shape, generator=g, dtype=x.dtype) for k, x in phi.items()}
    close(products.phi, phi)
    close(products.jvp(v), jvp(adapt, (theta,), (v,))[1])
    close(products.vjp(u), vjp_fn(u)[0])
    close(products.fisher(u), lrn._fisher_product(phi, post)(u))
    close(products.surrogate_gradient(), vmap(grad(lrn._surrogate))(phi, post, old))
    return products, v, old


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_products_equal_torch_func(activation):
    torch.manual_seed(0)
    cfg = MamlConfig(name="maml_trpo", inner_lr=0.3)
    policy = GaussianMLPPolicy(3, 3, [8, 7], activation=activation, init_std=0.7, min_std=0.5).double()
    lrn = MamlLearner(cfg, policy, "cpu")
    with torch.no_grad():  # one std clamped at min_std: its gradient (and curvature) is 0
        lrn.meta["log_std"].copy_(torch.tensor([0.2, -0.4, -1.5]))
    pre = prepare(_double(random_batch(a=3, seed=1)), cfg, lrn.device)
    post = prepare(_double(random_batch(a=3, seed=2)), cfg, lrn.device)

    def close(a, b):
        assert list(a) == list(b)  # same keys in the same order (callers flatten by it)
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12, msg=k)

    products, v, old = check_products(lrn, pre, post, close)
    torch.testing.assert_close(products.adapted_policy[0], old[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(products.adapted_policy[1], old[1], rtol=1e-10, atol=1e-12)
    assert products.jvp(v)["log_std"][:, 2].eq(v["log_std"][2]).all()  # clamped: J = I there


def test_products_equal_torch_func_at_ml1_shape():
    """The shape the products exist for, in float32: ML1's 39 -> 2x512 tanh -> 4 policy on 2
    tasks x 10 episodes x 500 steps (10,000 steps: two of CHUNK_STEPS's groups). Each product
    agrees with torch.func to float32 rounding over sums of 5,000 steps, as a relative norm."""
    torch.manual_seed(0)
    cfg = MamlConfig(name="maml_trpo", inner_lr=0.1)
    lrn = MamlLearner(cfg, GaussianMLPPolicy(39, 4, [512, 512], activation="tanh"), "cpu")
    pre, post = (prepare(random_batch(n=2, e=10, t=500, o=39, a=4, seed=s), cfg, lrn.device) for s in (1, 2))

    def close(a, b):  # measured: at most 1.1e-6 (one AMD VM)
        assert list(a) == list(b)
        for k in b:
            assert (a[k] - b[k]).norm() <= 1e-4 * b[k].norm() + 1e-7, k

    check_products(lrn, pre, post, close)


def test_trpo_step_is_the_same_on_both_paths():
    results = []
    for closed_form in (True, False):
        torch.manual_seed(0)
        lrn = MamlLearner(MamlConfig(name="maml_trpo"), GaussianMLPPolicy(3, 2, [16, 16]), "cpu")
        lrn.closed_form = closed_form
        stats = lrn.update([random_batch(seed=7)], random_batch(seed=8))
        assert stats["loss/step_accepted"] == 1.0
        results.append((_flat(lrn._theta()), stats))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
    assert results[0][1]["loss/kl"] == pytest.approx(results[1][1]["loss/kl"], rel=1e-3)


def test_supports():
    mlp = GaussianMLPPolicy(3, 2, [8])
    assert supports(mlp, 1, False)
    assert not supports(mlp, 2, False)
    assert not supports(mlp, 1, True)
    assert not supports(GaussianMLPPolicy(3, 2, [8], std_type="head"), 1, False)
    assert not supports(GaussianMLPPolicy(3, 2, [8], max_std=0.5), 1, False)  # a std clamped from above
