"""ProMP: the LVC inner objective's gradient and Hessian, the meta-gradient, the KL penalty,
each against a hand computation or finite differences in float64 (Meta-World's protocol:
tests/test_rl2.py::test_learners_run_metaworlds_protocol)."""

import pytest
import torch
from torch.func import functional_call, grad, hessian

from metarl.algos import MamlConfig
from metarl.algos.maml import MamlLearner, TaskData, _flat, adapt_kl_penalty, prepare
from metarl.policies import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from tests.test_maml import random_batch

OBS, A = 3, 2


def linear_learner(**kw) -> MamlLearner:
    """ProMP on a linear Gaussian policy (mean W x + b, log-std s), float64."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(OBS, A, [], init_std=0.8).double()
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.3, 0.2], dtype=torch.float64))
    lrn = MamlLearner(MamlConfig(name="promp", inner_lr=0.3, **kw), policy, "cpu")
    assert all(v.dtype == torch.float64 for v in lrn.meta.values())
    return lrn


def double(data: TaskData) -> TaskData:
    return TaskData(*(x.double() for x in data))


def with_sampling_log_prob(lrn: MamlLearner, data: TaskData, params) -> TaskData:
    """``data`` with the log-likelihoods under ``params`` as its sampling policy's."""
    mean, std = lrn.forward_all(params, data.obs)
    return data._replace(sampling_log_prob=gaussian_log_prob(mean, std, data.actions).detach())


def per_sample_derivatives(theta, x, a):
    """Hand-written gradient (P,) and Hessian (P, P) of log N(a; W x + b, diag(exp(2 s)))
    for one sample, parameters flattened in ``theta``'s order."""
    w, b, s = theta["mean.weight"], theta["mean.bias"], theta["log_std"]
    offsets, at = {}, 0
    for k, v in theta.items():
        offsets[k], at = at, at + v.numel()
    sigma = s.exp()
    u = (a - (w @ x + b)) / sigma  # standardised residual (A,)
    phi = torch.cat([x, torch.ones(1, dtype=x.dtype)])  # d mean_j / d (W_j, b_j)
    p = A * OBS + 2 * A
    g, h = torch.zeros(p, dtype=x.dtype), torch.zeros(p, p, dtype=x.dtype)
    for j in range(A):
        idx_mean = [offsets["mean.weight"] + j * OBS + k for k in range(OBS)] + [offsets["mean.bias"] + j]  # W_j., b_j
        idx_s = offsets["log_std"] + j
        g[idx_mean] = u[j] / sigma[j] * phi
        g[idx_s] = u[j] ** 2 - 1
        h[torch.tensor(idx_mean).unsqueeze(1), torch.tensor(idx_mean)] = -torch.outer(phi, phi) / sigma[j] ** 2
        h[idx_mean, idx_s] = h[idx_s, idx_mean] = -2 * u[j] / sigma[j] * phi
        h[idx_s, idx_s] = -2 * u[j] ** 2
    return g, h


def test_lvc_gradient_is_the_policy_gradient_and_its_hessian_the_lvc_estimate():
    """At the sampling policy, grad J_LVC = sum_t w A grad log pi and its Hessian is
    sum_t w A (grad^2 log pi + grad log pi grad log pi^T), written out by hand for a linear
    Gaussian policy; the plain log-likelihood objective's Hessian lacks the outer products."""
    lrn = linear_learner()
    theta = {k: v.detach() for k, v in lrn.meta.items()}
    data = double(prepare(random_batch(n=1, o=OBS, a=A, seed=2), lrn.cfg, lrn.device))
    data = TaskData(*(x[0] for x in with_sampling_log_prob(lrn, data, {k: v.unsqueeze(0) for k, v in theta.items()})))

    g_ref = torch.zeros(A * OBS + 2 * A, dtype=torch.float64)
    h_lvc, h_pg = torch.zeros(g_ref.shape * 2, dtype=torch.float64), torch.zeros(g_ref.shape * 2, dtype=torch.float64)
    for x, a, adv, w in zip(data.obs, data.actions, data.advantages, data.weight, strict=True):
        g, h = per_sample_derivatives(theta, x, a)
        g_ref += w * adv * g
        h_lvc += w * adv * (h + torch.outer(g, g))
        h_pg += w * adv * h

    def flat_hessian(f):
        hs = hessian(f)(theta)
        names = list(theta)
        return torch.cat([torch.cat([hs[r][c].reshape(theta[r].numel(), theta[c].numel()) for c in names], 1)
                          for r in names], 0)

    # inner_loss is the negated objective
    assert torch.allclose(-_flat(grad(lrn.inner_loss)(theta, data)), g_ref, atol=1e-12)
    assert torch.allclose(-flat_hessian(lambda th: lrn.inner_loss(th, data)), h_lvc, atol=1e-10)
    lrn.cfg = MamlConfig(name="maml_ppo", inner_lr=0.3)  # the plain policy-gradient inner objective
    assert torch.allclose(-_flat(grad(lrn.inner_loss)(theta, data)), g_ref, atol=1e-12)
    assert torch.allclose(-flat_hessian(lambda th: lrn.inner_loss(th, data)), h_pg, atol=1e-10)
    assert not torch.allclose(h_lvc, h_pg, atol=1e-3)  # the outer-product term matters here


def promp_problem(lrn: MamlLearner):
    """Float64 batches as the update sees them, with their sampling policies at the current
    meta-parameters: steps, post, old (post's), samplers (each step's)."""
    pre, post = (double(prepare(random_batch(n=3, o=OBS, a=A, seed=s), lrn.cfg, lrn.device)) for s in (3, 4))
    steps, old, samplers = lrn.sampling_policies([pre], post)
    return steps, post, old, samplers


def test_meta_gradient_through_the_lvc_step_matches_finite_differences():
    """d/dtheta of ProMP's outer loss (clipped surrogate of the adapted policies plus the KL
    penalty), second order through the LVC inner step, against central differences, at a
    point away from the sampling policy where the penalty and the ratios move."""
    lrn = linear_learner(kl_penalty=0.7)
    steps, post, old, samplers = promp_problem(lrn)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for v in lrn.meta.values():
            v.add_(0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype))
    theta = {k: v.detach().requires_grad_() for k, v in lrn.meta.items()}
    loss, ratio, inner_kl = lrn.ppo_loss(theta, steps, post, old, samplers)
    assert inner_kl is not None and float(inner_kl[0].detach()) > 1e-4
    assert ((ratio - 1).abs() > 1e-3).any()
    gradient = _flat(dict(zip(theta, torch.autograd.grad(loss, list(theta.values())), strict=True)))
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
        eps = 1e-6

        def at(sign, eps=eps, direction=direction):
            with torch.no_grad():
                shifted = {k: v.detach() + sign * eps * direction[k] for k, v in theta.items()}
            return float(lrn.ppo_loss(shifted, steps, post, old, samplers)[0])

        fd = (at(1) - at(-1)) / (2 * eps)
        assert gradient @ _flat(direction) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_outer_loss_and_gradient_match_a_transcription_of_promps_reference():
    """ProMP's outer loss written out task by task in the shape of its reference code
    (``meta_algos/pro_mp.py``): two LVC inner steps against the policies that sampled each
    step's data, the clipped surrogate of the adapted policy against the one that sampled
    the post-adaptation data, plus mean_k eta_k * KL_k. The log-probs are recorded as a
    sampler records them (float32, along the LVC path at the sampling parameters), and the
    update recomputes them in its own precision. Catches a flipped penalty or surrogate
    sign, which finite differences of the library's own loss cannot."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(OBS, A, [5], init_std=0.7).double()
    eta, lr, clip = [0.3, 0.7], 0.4, 0.2
    lrn = MamlLearner(MamlConfig(name="promp", inner_lr=lr, num_inner_steps=2, kl_penalty=0.3, ppo_clip=clip),
                      policy, "cpu")
    lrn.kl_penalty = torch.tensor(eta, dtype=torch.float64)
    steps = [double(prepare(random_batch(n=2, o=OBS, a=A, seed=s), lrn.cfg, lrn.device)) for s in (11, 12)]
    post = double(prepare(random_batch(n=2, o=OBS, a=A, seed=13), lrn.cfg, lrn.device))
    start = {k: v.detach() for k, v in lrn.meta.items()}

    def task(data: TaskData, i: int) -> TaskData:
        return TaskData(*(x[i] for x in data))

    def lvc_step(params, data, sampling_log_prob, create_graph):
        mean, std = functional_call(policy, params, (data.obs,))
        ratio = torch.exp(gaussian_log_prob(mean, std, data.actions) - sampling_log_prob)
        objective = -(ratio * data.advantages * data.weight).sum()
        grads = torch.autograd.grad(objective, list(params.values()), create_graph=create_graph)
        return {k: v - lr * g for (k, v), g in zip(params.items(), grads, strict=True)}

    def sampling_path(i, recorded=None):
        """Each inner step's sampling policy (mean, std on its data) and the last adapted
        parameters, from the parameters the sampler held, without a graph; the LVC steps
        divide by the ``recorded`` log-probs where given (as the reference, by its agent
        infos), else by the policy's own."""
        params, policies = dict(start), []
        for k, data in enumerate(steps):
            d = task(data, i)
            mean, std = (x.detach() for x in functional_call(policy, params, (d.obs,)))
            policies.append((mean, std))
            live = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
            denominator = gaussian_log_prob(mean, std, d.actions) if recorded is None else recorded[k][i]
            params = {k: v.detach() for k, v in lvc_step(live, d, denominator, False).items()}
        return policies, params

    own = [torch.zeros_like(data.sampling_log_prob) for data in steps]
    for i in range(2):
        policies, _ = sampling_path(i)
        for data, log_prob, (mean, std) in zip(steps, own, policies, strict=True):
            log_prob[i] = gaussian_log_prob(mean, std, task(data, i).actions)
            data.sampling_log_prob[i] = log_prob[i].float()  # as a sampler records them
    recorded = [data.sampling_log_prob.clone() for data in steps]
    steps, old, samplers = lrn.sampling_policies(steps, post)
    # Recomputed in the update's precision (the first step's sampler is the meta-policy itself).
    torch.testing.assert_close(steps[0].sampling_log_prob, own[0], rtol=0, atol=1e-12)
    assert not torch.equal(steps[0].sampling_log_prob, recorded[0])

    g = torch.Generator().manual_seed(5)
    theta = {k: (v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)).requires_grad_() for k, v in start.items()}
    loss = lrn.ppo_loss(theta, steps, post, old, samplers)[0]
    surrogates, kls = [], [[], []]
    for i in range(2):
        policies, last = sampling_path(i, recorded)
        params = theta
        for k, data in enumerate(steps):
            d = task(data, i)
            mean, std = functional_call(policy, params, (d.obs,))
            kls[k].append((gaussian_kl(*policies[k], mean, std) * d.weight).sum())
            params = lvc_step(params, d, gaussian_log_prob(*policies[k], d.actions), True)
        q = task(post, i)
        old_mean, old_std = (x.detach() for x in functional_call(policy, last, (q.obs,)))
        mean, std = functional_call(policy, params, (q.obs,))
        ratio = torch.exp(gaussian_log_prob(mean, std, q.actions) - gaussian_log_prob(old_mean, old_std, q.actions))
        clipped = torch.min(ratio * q.advantages, ratio.clamp(1 - clip, 1 + clip) * q.advantages)
        surrogates.append(-(clipped * q.weight).sum())
    penalty = (torch.tensor(eta, dtype=torch.float64) * torch.stack([torch.stack(k).mean() for k in kls])).mean()
    reference = torch.stack(surrogates).mean() + penalty
    assert float(penalty.detach()) > 1e-3  # both terms matter at this theta
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=0)
    got, want = (torch.autograd.grad(x, list(theta.values())) for x in (loss, reference))
    torch.testing.assert_close(_flat(dict(zip(theta, got, strict=True))), _flat(dict(zip(theta, want, strict=True))),
                               rtol=0, atol=1e-12)

def test_kl_penalty_gradient_by_hand():
    """eta * KL(pi_old || pi_theta) on the pre-update data: d/dmean = (mean - mean_old) / var
    and d/dlog_std = 1 - (var_old + (mean - mean_old)^2) / var per sample, chained onto
    (W, b, s) by hand, weighted means over each task's steps, mean over tasks."""
    eta = 0.37
    lrn = linear_learner(kl_penalty=eta)
    steps, _, _, samplers = promp_problem(lrn)
    with torch.no_grad():
        lrn.meta["mean.weight"].add_(0.1)
        lrn.meta["log_std"].sub_(0.2)
    theta = {k: v.detach().requires_grad_() for k, v in lrn.meta.items()}
    path = lrn.adapt_path_all(theta, steps)
    penalty = (lrn.kl_penalty.to(torch.float64) * lrn.inner_kls(path, steps, samplers)).mean()
    got = _flat(dict(zip(theta, torch.autograd.grad(penalty, list(theta.values())), strict=True)))

    w_, b_, s_ = (theta[k].detach() for k in ("mean.weight", "mean.bias", "log_std"))
    var = (2 * s_).exp()
    ref = {k: torch.zeros_like(v) for k, v in theta.items()}
    data, (old_mean, old_std) = steps[0], samplers[0]
    n = data.obs.shape[0]
    for i in range(n):
        for x, m_old, sd_old, w in zip(data.obs[i], old_mean[i], old_std[i], data.weight[i], strict=True):
            d_mean = (w_ @ x + b_ - m_old) / var
            ref["mean.weight"] += eta * w / n * torch.outer(d_mean, x)
            ref["mean.bias"] += eta * w / n * d_mean
            ref["log_std"] += eta * w / n * (1 - (sd_old ** 2 + (w_ @ x + b_ - m_old) ** 2) / var)
    assert torch.allclose(got, _flat(ref), atol=1e-12)


def test_adaptive_penalty_halves_doubles_or_keeps_each_step():
    penalty = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    kl = torch.tensor([0.001, 0.01, 0.1], dtype=torch.float64)
    assert adapt_kl_penalty(penalty, kl, 0.01).tolist() == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("adaptive", [False, True])
def test_promp_update_moves_parameters_and_keeps_its_penalty_in_the_state(adaptive):
    lrn = linear_learner(kl_penalty=1e-3, adaptive_kl_penalty=adaptive, target_inner_kl=1e-9, ppo_epochs=2)
    before = _flat({k: v.detach().clone() for k, v in lrn.meta.items()})
    pre, post = (random_batch(n=3, o=OBS, a=A, seed=s) for s in (5, 6))
    pre, post = (type(b)(**{**b.__dict__, **{k: v.double() for k, v in b.__dict__.items()
                                            if torch.is_tensor(v) and v.is_floating_point()}}) for b in (pre, post))
    stats = lrn.update([pre], post)
    assert not torch.allclose(before, _flat({k: v.detach() for k, v in lrn.meta.items()}))
    assert stats["loss/inner_kl_0"] > 0 and stats["loss/kl_penalty_0"] == pytest.approx(1e-3)
    assert lrn.kl_penalty.item() == pytest.approx(2e-3 if adaptive else 1e-3)  # kl far above its target
    clone = linear_learner()
    clone.load_state_dict(lrn.state_dict())
    assert clone.kl_penalty.item() == lrn.kl_penalty.item()


def test_evaluation_adaptation_uses_the_recorded_sampling_policy():
    """At evaluation the LVC denominator is what the sampler recorded: with the sampling
    policy's own log-likelihoods the adapted parameters equal the plain policy-gradient step."""
    lrn = linear_learner()
    batch = random_batch(n=2, o=OBS, a=A, seed=7)
    params = {k: v.detach() for k, v in lrn.meta.items()}
    with torch.no_grad():
        mean, std = functional_call(lrn.policy, params, (batch.obs.double(),))
        log_probs = gaussian_log_prob(mean, std, batch.actions.double())
    batch = type(batch)(**{**batch.__dict__, **{k: v.double() for k, v in batch.__dict__.items()
                                              if torch.is_tensor(v) and v.is_floating_point()},
                           "log_probs": log_probs})
    promp = lrn.adapted_params([batch])
    lrn.cfg = MamlConfig(name="maml_ppo", inner_lr=0.3)
    plain = lrn.adapted_params([batch])
    for a, b in zip(promp, plain, strict=True):
        assert all(torch.allclose(a[k], b[k], atol=1e-12) for k in a)


def test_logged_post_update_kl_uses_the_lvc_adaptation():
    """ProMP's ``loss/kl`` adapts with its own LVC step (the closed-form MLP products are
    the plain policy-gradient step's), so it equals the KL recomputed through ``ppo_loss``'s
    adaptation at the new parameters."""
    torch.manual_seed(0)
    lrn = MamlLearner(MamlConfig(name="promp", inner_lr=0.3, ppo_epochs=3, outer_lr=0.05),
                      GaussianMLPPolicy(OBS, A, [8], init_std=0.8).double(), "cpu")
    assert not lrn._closed_form_applies()
    pre, post = (random_batch(n=3, o=OBS, a=A, seed=s) for s in (8, 9))
    pre, post = (type(b)(**{**b.__dict__, **{k: v.double() for k, v in b.__dict__.items()
                                            if torch.is_tensor(v) and v.is_floating_point()}}) for b in (pre, post))
    steps = [prepare(pre, lrn.cfg, lrn.device)]
    post_data = prepare(post, lrn.cfg, lrn.device)
    steps, old, _ = lrn.sampling_policies(steps, post_data)
    stats = lrn.update([pre], post)
    with torch.no_grad():
        mean, std = lrn.forward_all(lrn.adapt_all(lrn._theta(), steps), post_data.obs)
    from metarl.policies import gaussian_kl
    kl = (gaussian_kl(old[0], old[1], mean, std) * post_data.weight).sum(-1).mean()
    assert stats["loss/kl"] == pytest.approx(float(kl), rel=1e-9)
