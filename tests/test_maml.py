"""MAML correctness: the meta-gradient, its first-order variant, the TRPO step."""

from dataclasses import replace

import pytest
import torch
from torch.func import functional_call

from metarl.algos import MamlConfig
from metarl.algos.maml import MamlLearner, TaskData, _flat, prepare
from metarl.envs import Task
from metarl.policies import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from metarl.sampling import EpisodeBatch


def random_batch(n=3, e=2, t=6, o=3, a=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, e, t, dtype=torch.bool)
    mask[0, 1, 4:] = False  # one short episode
    term = torch.zeros(n, e, t, dtype=torch.bool)
    term[0, 1, 3] = True
    trunc = torch.zeros_like(term)
    trunc[..., -1] = mask[..., -1]
    return EpisodeBatch(torch.randn(n, e, t, o, generator=g), torch.randn(n, e, t, a, generator=g),
                        torch.randn(n, e, t, generator=g), torch.zeros(n, e, t), term, trunc, mask,
                        torch.randn(n, e, o, generator=g), None, [Task("x", {"i": i}) for i in range(n)])


def learner(name="maml_trpo", **kw):
    torch.manual_seed(0)
    cfg = MamlConfig(name=name, inner_lr=0.5, **kw)
    return MamlLearner(cfg, GaussianMLPPolicy(3, 2, [8, 8], init_std=0.7), "cpu")


def task(data: TaskData, i: int) -> TaskData:
    return TaskData(*(x[i] for x in data))


def reference_meta_gradient(lrn: MamlLearner, pre: TaskData, post: TaskData, first_order=False):
    """Autograd through an explicit inner SGD step, one task at a time (no torch.func)."""
    theta = {k: v.detach().clone().requires_grad_() for k, v in lrn.meta.items()}
    total = 0.0
    n = post.obs.shape[0]
    for i in range(n):
        d = task(pre, i)
        mean, std = functional_call(lrn.policy, theta, (d.obs,))
        inner = -(gaussian_log_prob(mean, std, d.actions) * d.advantages * d.weight).sum()
        grads = torch.autograd.grad(inner, list(theta.values()), create_graph=not first_order)
        phi = {k: p - lrn.cfg.inner_lr * (gk.detach() if first_order else gk)
               for (k, p), gk in zip(theta.items(), grads, strict=True)}
        q = task(post, i)
        mean, std = functional_call(lrn.policy, phi, (q.obs,))
        total = total + (-(gaussian_log_prob(mean, std, q.actions) * q.advantages * q.weight).sum())
    (total / n).backward()
    return _flat({k: v.grad for k, v in theta.items()})


def vpg_gradient(lrn: MamlLearner, pre: TaskData, post: TaskData, first_order=False):
    phi = lrn.adapt_all(lrn.meta, [pre], first_order=first_order)
    mean, std = lrn.forward_all(phi, post.obs)
    loss = -(gaussian_log_prob(mean, std, post.actions) * post.advantages * post.weight).sum(-1).mean()
    grads = torch.autograd.grad(loss, list(lrn.meta.values()))
    return torch.cat([g.reshape(-1) for g in grads])


def test_batched_meta_gradient_equals_per_task_reference():
    lrn = learner()
    pre, post = (prepare(random_batch(seed=s), lrn.cfg, lrn.device) for s in (1, 2))
    torch.testing.assert_close(vpg_gradient(lrn, pre, post), reference_meta_gradient(lrn, pre, post),
                               atol=1e-5, rtol=1e-5)


def test_first_order_drops_exactly_the_second_order_term():
    lrn = learner()
    pre, post = (prepare(random_batch(seed=s), lrn.cfg, lrn.device) for s in (1, 2))
    fo = vpg_gradient(lrn, pre, post, first_order=True)
    torch.testing.assert_close(fo, reference_meta_gradient(lrn, pre, post, first_order=True),
                               atol=1e-6, rtol=1e-5)
    # first order == the post-adaptation gradient evaluated at phi, mapped back with J = I
    phi = lrn.adapt_all(lrn._theta(), [pre])
    phi = {k: v.detach().requires_grad_() for k, v in phi.items()}
    mean, std = lrn.forward_all(phi, post.obs)
    loss = -(gaussian_log_prob(mean, std, post.actions) * post.advantages * post.weight).sum(-1).mean()
    g_phi = torch.autograd.grad(loss, list(phi.values()))
    torch.testing.assert_close(fo, torch.cat([g.sum(0).reshape(-1) for g in g_phi]), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(fo, vpg_gradient(lrn, pre, post), atol=1e-4)  # second order matters here


def test_second_order_meta_gradient_matches_finite_differences():
    lrn = learner()
    lrn.meta = {k: v.detach().double().requires_grad_() for k, v in lrn.meta.items()}
    lrn.policy.double()
    pre, post = (prepare(random_batch(n=2, seed=s), lrn.cfg, lrn.device) for s in (3, 4))
    pre, post = (TaskData(*(x.double() for x in d)) for d in (pre, post))

    def objective(theta):
        phi = lrn.adapt_all(theta, [pre])
        mean, std = lrn.forward_all(phi, post.obs)
        return -(gaussian_log_prob(mean, std, post.actions) * post.advantages * post.weight).sum(-1).mean()

    grad = vpg_gradient(lrn, pre, post)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in lrn.meta.items()}
        eps = 1e-6
        plus = objective({k: v.detach() + eps * direction[k] for k, v in lrn.meta.items()})
        minus = objective({k: v.detach() - eps * direction[k] for k, v in lrn.meta.items()})
        fd = (plus - minus).item() / (2 * eps)
        assert grad @ _flat(direction) == pytest.approx(fd, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("inner_steps,meta_sgd,closed_form,chunk_steps",
                         [(1, False, True, None), (1, False, True, 12), (1, False, False, None),
                          (2, False, True, None), (2, True, True, None)])
def test_trpo_gradient_and_hessian_vector_product_equal_double_backward(inner_steps, meta_sgd, closed_form,
                                                                         chunk_steps, monkeypatch):
    """The meta-gradient and J^T F J v that TRPO uses (closed-form products for one inner
    step, torch.func's JVP/VJP through the adaptation otherwise) equal double backward
    through the adaptation; with ``chunk_steps`` 12 the closed form sums them over its
    tasks one at a time."""
    import metarl.algos.maml as maml_module

    if chunk_steps:
        monkeypatch.setattr(maml_module, "CHUNK_STEPS", chunk_steps)
    lrn = learner(num_inner_steps=inner_steps, learn_inner_lr=meta_sgd)
    lrn.closed_form = closed_form
    assert lrn._closed_form_applies() == (closed_form and inner_steps == 1)
    steps = [prepare(random_batch(seed=s), lrn.cfg, lrn.device) for s in range(5, 5 + inner_steps)]
    post = prepare(random_batch(seed=9), lrn.cfg, lrn.device)
    theta = {k: v.detach().requires_grad_() for k, v in lrn.meta.items()}
    with torch.no_grad():
        old = lrn.forward_all({k: v.detach() for k, v in lrn.adapt_all(lrn._theta(), steps).items()}, post.obs)

    def adapted(th):
        return lrn.forward_all(lrn.adapt_all(th, steps), post.obs)

    def mean_kl(th):
        mean, std = adapted(th)
        return (gaussian_kl(old[0], old[1], mean, std) * post.weight).sum(-1).mean()

    def mean_surrogate(th):
        mean, std = adapted(th)
        ratio = torch.exp(gaussian_log_prob(mean, std, post.actions) - gaussian_log_prob(*old, post.actions))
        return -(ratio * post.advantages * post.weight).sum(-1).mean()

    ref_g = _flat(dict(zip(theta, torch.autograd.grad(mean_surrogate(theta), list(theta.values())), strict=True)))
    v = torch.randn(_flat(theta).shape, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(mean_kl(theta), list(theta.values()), create_graph=True)
    ref = torch.autograd.grad(torch.cat([g.reshape(-1) for g in grads]) @ v, list(theta.values()))
    ref = torch.cat([r.reshape(-1) for r in ref])

    captured = {}
    original = maml_module.conjugate_gradient

    def spy(avp, b, iters, **kwargs):
        captured["g"] = -b
        captured["hvp"] = avp(v) - lrn.cfg.cg_damping * v
        return original(avp, b, iters, **kwargs)

    maml_module.conjugate_gradient = spy
    try:
        lrn._trpo(steps, post)
    finally:
        maml_module.conjugate_gradient = original
    torch.testing.assert_close(captured["g"], ref_g, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(captured["hvp"], ref, atol=1e-5, rtol=1e-4)


def test_trpo_step_respects_max_kl_and_improves():
    for max_kl in (1e-3, 1e-2):
        lrn = learner(max_kl=max_kl)
        pre, post = random_batch(seed=7), random_batch(seed=8)
        stats = lrn.update([pre], post)
        assert stats["loss/step_accepted"] == 1.0
        assert 0 < stats["loss/kl"] <= max_kl
        assert stats["loss/surrogate_after"] < stats["loss/surrogate_before"]


def test_rejected_line_search_leaves_parameters_unchanged():
    """A step within the KL bound that does not improve the surrogate is rejected. On this
    batch the first candidate keeps the KL at 0.008 (<= 0.01) while a few importance ratios
    explode the surrogate; with one line-search step the update must keep theta."""
    lrn = learner(ls_max_steps=1, max_kl=0.01)
    pre, post = random_batch(seed=24), random_batch(seed=124)
    before = _flat(lrn._theta()).clone()
    seen = []
    evaluate = lrn.evaluate_objectives
    lrn.evaluate_objectives = lambda *a: seen.append(evaluate(*a)) or seen[-1]
    stats = lrn.update([pre], post)
    (loss, kl), = seen
    assert kl <= lrn.cfg.max_kl and loss >= stats["loss/surrogate_before"]  # the improvement check
    assert stats["loss/step_accepted"] == 0.0 and stats["loss/grad_norm"] > 0
    assert torch.equal(_flat(lrn._theta()), before)


def test_zero_advantages_give_a_zero_step_not_nan():
    lrn = learner()
    pre, post = random_batch(seed=7), random_batch(seed=8)
    post = replace(post, rewards=torch.zeros_like(post.rewards))  # zero advantages, zero gradient
    before = _flat(lrn._theta()).clone()
    stats = lrn.update([pre], post)
    assert stats["loss/grad_norm"] == 0 and stats["loss/step_accepted"] == 0.0
    assert all(v == v for v in stats.values())  # no NaN anywhere
    assert torch.equal(_flat(lrn._theta()), before)


@pytest.mark.parametrize("name, first_order", [("maml_vpg", False), ("maml_ppo", False), ("fomaml", True)])
def test_gradient_outer_rules_take_adams_first_step_along_the_meta_gradient(name, first_order):
    """Adam's first step is lr * g / (|g| + eps) per weight (its moments' bias corrections
    cancel); g is the per-task reference meta-gradient (maml_ppo's clipped objective at
    ratio 1 has the policy gradient's)."""
    lr = 0.01
    lrn = learner(name, outer_lr=lr, ppo_epochs=1)
    pre, post = random_batch(seed=1), random_batch(seed=2)
    g = reference_meta_gradient(lrn, *(prepare(b, lrn.cfg, lrn.device) for b in (pre, post)), first_order=first_order)
    before = _flat(lrn._theta()).clone()
    stats = lrn.update([pre], post)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    step = _flat(lrn._theta()) - before
    clear = g.abs() > 1e-4 * g.abs().max()  # where rounding cannot flip g's sign
    assert clear.float().mean() > 0.9
    torch.testing.assert_close(step[clear], -lr * torch.sign(g[clear]), atol=1e-6, rtol=1e-3)
    assert step.abs().max() <= lr * (1 + 1e-5)


def test_reptile_moves_theta_toward_the_mean_of_the_adapted_parameters():
    """theta + outer_lr * mean_i(phi_i - theta), phi_i one explicit SGD step on task i."""
    lrn = learner("reptile", outer_lr=0.3)
    pre = random_batch(seed=1)
    data = prepare(pre, lrn.cfg, lrn.device)
    theta = {k: v.detach().clone().requires_grad_() for k, v in lrn.meta.items()}
    phis = []
    for i in range(data.obs.shape[0]):
        d = task(data, i)
        mean, std = functional_call(lrn.policy, theta, (d.obs,))
        inner = -(gaussian_log_prob(mean, std, d.actions) * d.advantages * d.weight).sum()
        grads = torch.autograd.grad(inner, list(theta.values()))
        phis.append(_flat({k: p - lrn.cfg.inner_lr * gk for (k, p), gk in zip(theta.items(), grads, strict=True)}).detach())
    before = _flat(theta).detach()
    expected = before + 0.3 * (torch.stack(phis).mean(0) - before)
    stats = lrn.update([pre], random_batch(seed=2))
    torch.testing.assert_close(_flat(lrn._theta()), expected, atol=1e-6, rtol=1e-5)
    assert stats["loss/reptile_step_norm"] == pytest.approx(float((expected - before).norm() / 0.3), rel=1e-4)


def test_meta_sgd_learns_step_sizes_and_two_inner_steps_run():
    lrn = learner("maml_vpg", learn_inner_lr=True, num_inner_steps=2, outer_lr=0.01)
    lr_before = lrn.meta["lr.mean.bias"].detach().clone()
    lrn.update([random_batch(seed=1), random_batch(seed=2)], random_batch(seed=3))
    assert not torch.equal(lrn.meta["lr.mean.bias"], lr_before)
    with pytest.raises(ValueError, match="expected 2 pre-adaptation batches, got 1"):
        lrn.update([random_batch(seed=1)], random_batch(seed=3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("closed_form", [True, False])
def test_cuda_learner_matches_cpu(monkeypatch, closed_form):
    """Same meta-gradient and KL Hessian-vector products on both devices. (The CG solution
    is not compared: this tiny problem's Hessian is near-singular, so CG amplifies rounding;
    and which backtracking step is accepted may differ, as the full step's KL sits at
    max_kl by construction.)"""
    import metarl.algos.maml as maml_module

    captured = []
    original = maml_module.conjugate_gradient
    v = torch.randn(124, generator=torch.Generator().manual_seed(0))

    def spy(avp, b, iters, **kwargs):
        captured.append((b.cpu(), avp(v.to(b.device)).cpu()))
        return original(avp, b, iters, **kwargs)

    monkeypatch.setattr(maml_module, "conjugate_gradient", spy)
    cpu = learner()
    gpu = MamlLearner(cpu.cfg, GaussianMLPPolicy(3, 2, [8, 8], init_std=0.7), "cuda")
    gpu.load_state_dict(cpu.state_dict())
    cpu.closed_form = gpu.closed_form = closed_form
    pre, post = random_batch(seed=7), random_batch(seed=8)
    a, b = cpu.update([pre], post), gpu.update([pre], post)
    assert a["loss/step_accepted"] == b["loss/step_accepted"] == 1.0
    assert a["loss/grad_norm"] == pytest.approx(b["loss/grad_norm"], rel=1e-4)
    (g_cpu, hv_cpu), (g_gpu, hv_gpu) = captured
    torch.testing.assert_close(g_gpu, g_cpu, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(hv_gpu, hv_cpu, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("closed_form,chunk_steps", [(True, None), (True, 12), (False, None)])
def test_subsampled_curvature_is_the_kl_hessian_on_every_second_step(closed_form, chunk_steps, monkeypatch):
    """algo.hvp_subsample=0.5: the gradient is still the full batch's; the conjugate
    gradient's product is J_s^T F_s J_s v, the KL's Hessian (double backward) when the
    adaptation's Jacobian comes from every second pre-adaptation step and the Fisher from
    every second post-adaptation step, taken at the full batch's adapted policy. With
    ``chunk_steps`` 12 the closed form takes the gradient, the curvature products and the
    line search's candidates one task at a time (12 steps each), as it does in groups at
    Meta-World's shapes."""
    import metarl.algos.maml as maml_module
    from metarl.algos.maml import subsample

    if chunk_steps:
        monkeypatch.setattr(maml_module, "CHUNK_STEPS", chunk_steps)
    lrn = learner(hvp_subsample=0.5)
    lrn.closed_form = closed_form
    steps = [prepare(random_batch(seed=5), lrn.cfg, lrn.device)]
    post = prepare(random_batch(seed=9), lrn.cfg, lrn.device)
    sub_steps, sub_post = [subsample(steps[0], 0.5)], subsample(post, 0.5)
    assert sub_post.obs.shape[1] == 6 and torch.allclose(sub_post.weight.sum(-1), torch.ones(3))
    # task 0's second episode is 4 steps long: of its kept steps 6, 8, 10, step 10 is padding
    torch.testing.assert_close(sub_post.weight[0], torch.tensor([0.2] * 5 + [0.0]))
    theta = {k: v.detach().requires_grad_() for k, v in lrn.meta.items()}
    with torch.no_grad():
        phi_full = lrn.adapt_all(lrn._theta(), steps)
        phi_sub = lrn.adapt_all(lrn._theta(), sub_steps)
        old_sub = lrn.forward_all(phi_full, sub_post.obs)

    def kl_sub(th):  # the adaptation's Jacobian from sub_steps, the policy at phi_full
        moved = lrn.adapt_all(th, sub_steps)
        phi = {k: phi_full[k] + moved[k] - phi_sub[k] for k in moved}
        mean, std = lrn.forward_all(phi, sub_post.obs)
        return (gaussian_kl(old_sub[0], old_sub[1], mean, std) * sub_post.weight).sum(-1).mean()

    v = torch.randn(_flat(theta).shape, generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(kl_sub(theta), list(theta.values()), create_graph=True)
    ref = torch.cat([r.reshape(-1) for r in torch.autograd.grad(
        torch.cat([g.reshape(-1) for g in grads]) @ v, list(theta.values()))])

    captured, original = {}, maml_module.conjugate_gradient

    def spy(avp, b, iters, **kwargs):
        captured.setdefault("g", []).append(-b)
        captured.setdefault("hvp", []).append(avp(v) - lrn.cfg.cg_damping * v)
        return original(avp, b, iters, **kwargs)

    maml_module.conjugate_gradient = spy
    try:
        stats = lrn._trpo(steps, post)
        exact = learner()
        exact.closed_form = closed_form
        exact._trpo(steps, post)
    finally:
        maml_module.conjugate_gradient = original
    torch.testing.assert_close(captured["hvp"][0], ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(captured["hvp"][1], ref, atol=1e-3)  # the exact product differs
    torch.testing.assert_close(captured["g"][0], captured["g"][1], atol=1e-7, rtol=1e-6)
    # The line search checks the exact KL and surrogate: the trust region holds as before.
    assert stats["loss/step_accepted"] == 1.0 and 0 < stats["loss/kl"] <= lrn.cfg.max_kl


def test_task_chunks_cover_every_task_once_within_the_step_budget():
    from metarl.algos.maml import task_chunks

    data = prepare(random_batch(n=7), MamlConfig(name="maml_trpo"), torch.device("cpu"))  # 12 steps a task
    for budget, sizes in [(1, [1] * 7), (12, [1] * 7), (30, [2, 2, 1, 2]), (84, [7]), (10**6, [7])]:
        chunks = task_chunks(data, budget)
        assert [c.stop - c.start for c in chunks] == sizes, budget
        assert chunks[0].start == 0 and chunks[-1].stop == 7
        assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:], strict=False))


def test_line_search_candidates_by_task_groups_equal_the_whole_batch(monkeypatch):
    """The line search evaluates each candidate's surrogate and KL a group of tasks at a
    time (CHUNK_STEPS): the same numbers as on the whole batch at once, to rounding. (The
    direction's gradient and curvature products by groups are checked against double
    backward above.)"""
    import metarl.algos.maml as maml_module

    lrn = learner()
    steps = [prepare(random_batch(n=5, seed=7), lrn.cfg, lrn.device)]
    post = prepare(random_batch(n=5, seed=8), lrn.cfg, lrn.device)
    theta = lrn._theta()
    old = maml_module.maml_mlp.MlpMamlProducts(lrn.policy, theta, steps[0], post, lrn.cfg.inner_lr).adapted_policy
    g = torch.Generator().manual_seed(1)
    candidates = [{k: v + scale * torch.randn(v.shape, generator=g) for k, v in theta.items()} for scale in (0.01, 0.1)]
    values = {}
    for chunk_steps in (10**6, 24, 12):
        monkeypatch.setattr(maml_module, "CHUNK_STEPS", chunk_steps)
        assert len(maml_module.task_chunks(post)) == {10**6: 1, 24: 3, 12: 5}[chunk_steps]
        values[chunk_steps] = [lrn.evaluate_objectives(c, steps, post, old) for c in candidates]
    whole = values.pop(10**6)
    assert all(kl > 0 for _, kl in whole)
    for chunked in values.values():
        for (loss_a, kl_a), (loss_b, kl_b) in zip(chunked, whole, strict=True):
            assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-7)
            assert kl_a == pytest.approx(kl_b, rel=1e-5, abs=1e-9)
