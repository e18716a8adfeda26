"""PEARL: closed forms against hand computations and torch.distributions, the SAC step on a
hand-set tiny network, where the encoder's gradient comes from, the replay buffers, and
`metarl train pearl/nav2d` end to end with an exact resume."""

from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
import torch
from torch.distributions import (
    MultivariateNormal,
    Normal,
    TanhTransform,
    TransformedDistribution,
    kl_divergence,
)

from metarl import cli
from metarl.algos.pearl import (
    PearlConfig,
    PearlLearner,
    Posterior,
    TaskReplay,
    kl_to_standard_normal,
    product_of_gaussians,
    product_of_low_rank_gaussians,
    tanh_gaussian_sample,
    transition_rows,
)
from metarl.config import load_config
from metarl.envs import Task
from metarl.errors import ConfigError
from metarl.policies import GaussianMLPPolicy, LatentGaussianMLPPolicy, PolicySpec
from metarl.policies.acting import Actor
from metarl.sampling import EpisodeBatch

TINY = ["sampler.backend=local", "logger.wandb=false", "algo.gradient_steps=3", "algo.hidden_sizes=[16]",
        "algo.encoder_hidden_sizes=[16]", "policy.hidden_sizes=[16]", "algo.batch_size=8",
        "algo.embedding_batch_size=8", "meta_batch_size=2", "tasks.options.num_train_tasks=4",
        "tasks.options.num_test_tasks=2", "max_episode_steps=10", "eval.num_tasks=2", "eval.adapt_steps=2",
        "algo.num_tasks_sample=2", "algo.num_initial_episodes=1", "algo.num_prior_episodes=1",
        "algo.num_posterior_episodes=1", "algo.num_extra_posterior_episodes=1", "checkpoint_every=1"]


def _learner(obs_dim=2, act_dim=2, latent=3, hidden=(8,), num_tasks=3, **cfg) -> PearlLearner:
    config = PearlConfig(latent_dim=latent, hidden_sizes=list(hidden), encoder_hidden_sizes=list(hidden),
                         num_tasks_sample=1, **cfg)
    policy = LatentGaussianMLPPolicy(obs_dim, act_dim, latent, list(hidden), "relu", std_type="head",
                                     max_std=math.exp(2), squash=True)
    tasks = [Task("toy", {"i": i}, "train", i) for i in range(num_tasks)]
    return PearlLearner(config, policy, tasks, max_steps=5)


# ----------------------------------------------------------------------------- closed forms


def test_product_of_gaussian_factors_matches_hand_computation():
    means = torch.tensor([[1.0], [3.0]])  # (M=2, L=1)
    variances = torch.tensor([[1.0], [0.5]])
    mean, var = product_of_gaussians(means, variances)
    # precision 1 (prior) + 1 + 2 = 4; mean = (1 * 1 + 3 * 2) / 4
    torch.testing.assert_close(var, torch.tensor([0.25]))
    torch.testing.assert_close(mean, torch.tensor([1.75]))
    mean, var = product_of_gaussians(means, variances, torch.tensor([True, False]))
    torch.testing.assert_close((mean, var), (torch.tensor([0.5]), torch.tensor([0.5])))
    mean, var = product_of_gaussians(means, variances, torch.tensor([False, False]))
    torch.testing.assert_close((mean, var), (torch.zeros(1), torch.ones(1)))  # no context: the prior


def test_kl_to_the_prior_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, var = torch.randn(4, 5, generator=g), torch.rand(4, 5, generator=g) + 0.1
    expected = kl_divergence(Normal(mean, var.sqrt()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mean, var), expected)


def _low_rank_case(g: torch.Generator, m: int = 4, latent: int = 3, rank: int = 2):
    means = torch.randn(2, m, latent, generator=g, dtype=torch.float64)
    variances = torch.rand(2, m, latent, generator=g, dtype=torch.float64) + 0.2
    factors = torch.randn(2, m, latent, rank, generator=g, dtype=torch.float64)
    return means, variances, factors


def test_product_of_low_rank_factors_matches_dense_hand_computation():
    means, variances, factors = _low_rank_case(torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    q = product_of_low_rank_gaussians(means, variances, factors, mask)
    for b in range(2):  # each factor's precision as a dense matrix, multiplied out
        precisions = [torch.diag(1 / variances[b, n]) + factors[b, n] @ factors[b, n].T
                      for n in range(4) if mask[b, n]]
        total = torch.eye(3, dtype=torch.float64) + sum(precisions)
        eta = sum(p @ means[b, n] for p, n in zip(precisions, [n for n in range(4) if mask[b, n]], strict=True))
        covariance = torch.linalg.inv(total)
        torch.testing.assert_close(q.mean[b], covariance @ eta)
        torch.testing.assert_close(q.variance[b], torch.diagonal(covariance))
        torch.testing.assert_close(q.chol[b] @ q.chol[b].T, total)
    # without the low-rank term it is the diagonal product, and an empty context is the prior
    zero = product_of_low_rank_gaussians(means, variances, torch.zeros_like(factors), mask)
    torch.testing.assert_close((zero.mean, zero.variance), product_of_gaussians(means, variances, mask))
    empty = product_of_low_rank_gaussians(means, variances, factors, torch.zeros(2, 4, dtype=torch.bool))
    torch.testing.assert_close((empty.mean, empty.variance), (torch.zeros(2, 3).double(), torch.ones(2, 3).double()))


@pytest.mark.parametrize("scale", [1e2, 3e3, 1e4])
def test_a_float32_low_rank_posterior_keeps_its_mean_when_the_factors_agree(scale):
    """Factors that all pin z along (1, 1) with precision 1 + 2 scale^2 leave the summed
    precision's condition number at scale^2 or more: in float32 arithmetic the mean was a third
    off at scale 3e3 and the Cholesky failed at 1e4. The float32 posterior must match the
    float64 one: mean, variance, KL and a sample."""
    for m in (1, 64):
        means = torch.tensor([1.0, -1.0]).repeat(m, 1)
        variances, factors = torch.ones(m, 2), torch.full((m, 2, 1), scale)
        q = product_of_low_rank_gaussians(means, variances, factors)
        exact = product_of_low_rank_gaussians(means.double(), variances.double(), factors.double())
        assert q.mean.dtype == q.variance.dtype == torch.float32
        torch.testing.assert_close(q.mean, exact.mean.float())
        torch.testing.assert_close(q.variance, exact.variance.float())
        torch.testing.assert_close(q.kl(), exact.kl().float())
        noise = torch.tensor([0.3, -1.2])
        torch.testing.assert_close(q.sample(noise), exact.sample(noise.double()).float())
    # one factor: the mean sits half-way to the factor's, as the hand computation gives
    torch.testing.assert_close(product_of_low_rank_gaussians(means[:1], variances[:1], factors[:1]).mean,
                               torch.tensor([0.5, -0.5]))


def test_a_full_covariance_posterior_samples_and_kl_match_torch_distributions():
    means, variances, factors = _low_rank_case(torch.Generator().manual_seed(1))
    q = product_of_low_rank_gaussians(means, variances, factors)
    precision = q.chol @ q.chol.mT
    expected = kl_divergence(MultivariateNormal(q.mean, precision_matrix=precision),
                             MultivariateNormal(torch.zeros(3).double(), torch.eye(3).double()))
    torch.testing.assert_close(q.kl(), expected)
    # z = mean + A noise with A A^T the covariance: the noise's unit vectors give A's columns
    columns = torch.stack([q.sample(torch.eye(3).double()[j].expand(2, 3)) - q.mean for j in range(3)], -1)
    torch.testing.assert_close(columns @ columns.mT, torch.linalg.inv(precision))
    # the diagonal posterior keeps its own closed forms
    diagonal = Posterior(q.mean, q.variance)
    noise = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(diagonal.sample(noise), q.mean + q.variance.sqrt() * noise)
    torch.testing.assert_close(diagonal.kl(), kl_to_standard_normal(q.mean, q.variance))


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean, std, noise = torch.randn(6, 3, generator=g), torch.rand(6, 3, generator=g) + 0.2, torch.randn(6, 3, generator=g)
    action, log_pi = tanh_gaussian_sample(mean, std, noise)
    dist = TransformedDistribution(Normal(mean, std), [TanhTransform()])
    torch.testing.assert_close(action, torch.tanh(mean + std * noise))
    torch.testing.assert_close(log_pi, dist.log_prob(action).sum(-1), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- SAC step


def _set_linear(net: torch.nn.Sequential, weight: list[float], bias: float = 0.0) -> None:
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([weight]))
        net[0].bias.fill_(bias)


def test_sac_targets_and_losses_on_a_tiny_batch_match_hand_computation():
    """Linear networks set by hand (obs, action, latent of size 1): Q1 = s + a, Q2 = 2 s,
    V_target = s' + 0.25, V = 0, policy mean 0 and log-std 0 (pre-tanh actions = the noise)."""
    learner = _learner(obs_dim=1, act_dim=1, latent=1, hidden=(), reward_scale=5.0, gamma=0.9, tau=0.1,
                       alpha=0.5, policy_mean_reg=0.0, policy_std_reg=0.0)
    _set_linear(learner.qf1, [1.0, 1.0, 0.0])
    _set_linear(learner.qf2, [2.0, 0.0, 0.0])
    _set_linear(learner.vf, [0.0, 0.0])
    _set_linear(learner.target_vf, [1.0, 0.0], 0.25)
    with torch.no_grad():
        for layer in (learner.policy.mean, learner.policy.log_std_head):
            layer.weight.zero_()
            layer.bias.zero_()
    # rows [s, a, r, s', terminated] of one task; s < 0 makes Q2 = 2 s the minimum, s > 0 Q1 = s + a
    rows = torch.tensor([[[-1.0, 0.5, 1.0, 2.0, 0.0], [0.5, -0.2, -1.0, 3.0, 1.0], [2.0, 0.1, 0.0, -1.0, 0.0]]])
    noise = torch.tensor([[[0.3], [-0.7], [1.2]]])
    s, a, r, s2, d = rows[0].T
    u = noise[0, :, 0]

    target = r * 5.0 + 0.9 * (1 - d) * (s2 + 0.25)
    expected_qf = ((s + a - target) ** 2).mean() + ((2 * s - target) ** 2).mean()
    new_a = torch.tanh(u)
    log_pi = -0.5 * u ** 2 - 0.5 * math.log(2 * math.pi) - torch.log(1 - new_a ** 2)
    min_q = torch.minimum(s + new_a, 2 * s)
    assert min_q[0] == 2 * s[0] and min_q[2] == s[2] + new_a[2]  # each twin is the minimum somewhere
    expected_vf = ((min_q - 0.5 * log_pi) ** 2).mean()  # V = 0, temperature 0.5
    expected_policy = (0.5 * log_pi - min_q).mean()

    obs, actions, rewards, next_obs, terminated = learner._split(rows)
    z = torch.full((1, 3, 1), 0.7)  # no network above looks at z
    torch.testing.assert_close(learner.critic_loss(obs, actions, rewards, next_obs, terminated, z), expected_qf)
    losses = learner.actor_losses(obs, z, noise)
    torch.testing.assert_close(losses["vf"], expected_vf)
    torch.testing.assert_close(losses["policy"], expected_policy)

    # one whole step: its Q loss is the one above; the target V moves by tau towards V's new weights
    target_before = [p.clone() for p in learner.target_vf.parameters()]
    stats = learner.update_on(torch.randn(1, 4, 3), rows, torch.zeros(1, 1), noise)
    torch.testing.assert_close(stats["qf"], expected_qf)
    vf_after = list(learner.vf.parameters())
    assert not torch.equal(vf_after[0], torch.zeros(1, 2))  # V took a step
    for old, new, v in zip(target_before, learner.target_vf.parameters(), vf_after, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * v)


def test_learned_temperature_moves_towards_the_target_entropy():
    learner = _learner(learn_alpha=True, alpha=0.2, target_entropy=-2.0)
    obs, z, noise = torch.randn(2, 4, 2), torch.randn(2, 4, 3), torch.randn(2, 4, 2)
    losses = learner.actor_losses(obs, z, noise)
    mean, std = learner.policy(obs, z)
    _, log_pi = tanh_gaussian_sample(mean, std, noise)
    torch.testing.assert_close(losses["alpha"], -(math.log(0.2) * (log_pi + -2.0)).mean())


@pytest.mark.parametrize("rank", [0, 1])
def test_the_encoder_learns_from_the_critic_and_the_kl_not_from_the_actor(rank):
    torch.manual_seed(0)
    a = _learner(kl_weight=0.3, factor_rank=rank)
    torch.manual_seed(0)
    b = _learner(kl_weight=0.3, factor_rank=rank)
    g = torch.Generator().manual_seed(2)
    context, rows = torch.randn(2, 6, 5, generator=g), torch.randn(2, 4, 8, generator=g)
    rows[..., -1] = 0.0
    z_noise, action_noise = torch.randn(2, 3, generator=g), torch.randn(2, 4, 2, generator=g)
    enc = list(b.encoder.parameters())

    obs, actions, rewards, next_obs, terminated = b._split(rows)
    q = b.posterior(context)
    assert (q.chol is None) == (rank == 0)
    z = q.sample(z_noise).unsqueeze(1).expand(2, 4, 3)
    actor = sum(b.actor_losses(obs, z, action_noise).values())
    assert all(grad is None for grad in torch.autograd.grad(actor, enc, allow_unused=True, retain_graph=True))
    critic = b.critic_loss(obs, actions, rewards, next_obs, terminated, z)
    assert all(grad.abs().sum() > 0 for grad in torch.autograd.grad(critic, enc, retain_graph=True))

    # the update moves the encoder by exactly one Adam step on the critic loss + 0.3 KL
    grads = torch.autograd.grad(critic + 0.3 * q.kl().sum(), enc)
    for p, grad in zip(enc, grads, strict=True):
        p.grad = grad
    b.optimizers["encoder"].step()
    a.update_on(context, rows, z_noise, action_noise)
    for pa, pb in zip(a.encoder.parameters(), enc, strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-7)


@pytest.mark.parametrize("rank", [0, 2])
def test_the_posterior_narrows_as_the_context_grows(rank):
    torch.manual_seed(0)
    learner = _learner(factor_rank=rank)
    context = torch.randn(1, 32, learner.context_dim)
    variances = []
    for m in (0, 1, 4, 16, 32):
        variances.append(learner.posterior(context, torch.arange(32).unsqueeze(0) < m).variance)
    torch.testing.assert_close(variances[0], torch.ones(1, 3))
    for wider, narrower in itertools.pairwise(variances):
        assert (narrower < wider).all()


def _batch(n: int, e: int, t: int, obs_dim: int, act_dim: int, lengths: list[list[int]]) -> EpisodeBatch:
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(n, e, t, dtype=torch.bool)
    truncated = torch.zeros(n, e, t, dtype=torch.bool)
    for i in range(n):
        for j in range(e):
            mask[i, j, :lengths[i][j]] = True
            truncated[i, j, lengths[i][j] - 1] = True
    return EpisodeBatch(obs=torch.randn(n, e, t, obs_dim, generator=g), actions=torch.randn(n, e, t, act_dim, generator=g),
                        rewards=torch.randn(n, e, t, generator=g), log_probs=torch.zeros(n, e, t),
                        terminated=torch.zeros(n, e, t, dtype=torch.bool), truncated=truncated, mask=mask,
                        last_obs=torch.randn(n, e, obs_dim, generator=g), success=None,
                        tasks=[Task("toy", {"i": i}) for i in range(n)])


def test_transitions_and_adaptation_keep_valid_steps_only():
    batch = _batch(2, 2, 4, 2, 2, [[4, 2], [3, 1]])
    rows = transition_rows(batch)
    assert [r.shape for r in rows] == [(6, 8), (4, 8)]
    torch.testing.assert_close(rows[0][1, 5:7], batch.obs[0, 0, 2])  # next obs inside an episode
    torch.testing.assert_close(rows[0][5, 5:7], batch.last_obs[0, 1])  # and at its last step
    torch.testing.assert_close(rows[1][0, 2:4], torch.tanh(batch.actions[1, 0, 0]))

    torch.manual_seed(0)
    learner = _learner()
    state = learner.init_adaptation(batch.tasks, seed=5)
    assert state.z.shape == (2, 3) and [c.shape[0] for c in state.context] == [0, 0]
    again = learner.adapt(learner.adapt(state, batch), batch)
    assert [c.shape[0] for c in again.context] == [12, 8]
    assert not torch.equal(again.z, state.z)
    torch.testing.assert_close(learner.adapt(state, batch).z, learner.adapt(state, batch).z)  # pure, seeded
    acting = learner.acting(again)
    assert len(acting.params) == 2 and torch.equal(acting.params[1]["z"], again.z[1])
    assert torch.equal(acting.params[0]["mean.weight"], acting.params[1]["mean.weight"])


def test_exploration_episodes_keep_the_priors_z_then_infer_from_them_all():
    """oyster's num_exp_traj_eval: with 2, the second episode still acts on the prior's draw
    and the third on the posterior of both, the one a learner inferring after every episode
    reaches after the same two."""
    first, second = _batch(2, 1, 4, 2, 2, [[4], [3]]), _batch(2, 1, 4, 2, 2, [[2], [4]])
    torch.manual_seed(0)
    every = _learner()
    torch.manual_seed(0)
    explore = _learner(exploration_episodes=2)
    start = explore.init_adaptation(first.tasks, seed=5)
    after_one = explore.adapt(start, first)
    assert torch.equal(after_one.z, start.z) and [c.shape[0] for c in after_one.context] == [4, 3]
    after_two = explore.adapt(after_one, second)
    reference = every.adapt(every.adapt(every.init_adaptation(first.tasks, seed=5), first), second)
    assert not torch.equal(after_two.z, start.z)
    assert torch.equal(after_two.z, reference.z)


# ----------------------------------------------------------------------------- policy


def test_the_latent_policy_acts_per_task_through_the_actor():
    torch.manual_seed(0)
    policy = LatentGaussianMLPPolicy(3, 2, 4, [8], "relu", std_type="head", max_std=math.exp(2), squash=True)
    spec = policy.spec
    assert spec.kind == "latent_gaussian_mlp" and spec.latent_dim == 4
    assert isinstance(spec.build(), LatentGaussianMLPPolicy)
    assert PolicySpec("gaussian_mlp", 3, 2).latent_dim == 0
    assert type(PolicySpec("gaussian_mlp", 3, 2).build()) is GaussianMLPPolicy
    base = policy.params()
    zs = torch.randn(2, 4)
    actor = Actor(spec, [base | {"z": z} for z in zs], [0, 0, 1])
    obs = torch.randn(3, 3)
    mean, std = actor.act(torch.arange(3).numpy(), obs, torch.zeros(3).numpy())
    expected_mean, expected_std = policy(obs, zs[[0, 0, 1]])
    torch.testing.assert_close((mean, std), (expected_mean, expected_std))


# ----------------------------------------------------------------------------- buffers


def test_replay_samples_per_task_wraps_around_and_round_trips():
    replay = TaskReplay(3, 2, capacity=5, device=torch.device("cpu"))
    replay.add(0, torch.tensor([[0.0, float(i)] for i in range(7)]))  # 7 rows into 5: rows 2..6 stay
    replay.add(2, torch.tensor([[2.0, 10.0], [2.0, 11.0]]))
    replay.add(1, torch.tensor([[1.0, 20.0]]))
    assert replay.sizes.tolist() == [5, 1, 2] and replay.count.tolist() == [7, 1, 2]
    g = torch.Generator().manual_seed(0)
    sample = replay.sample(torch.tensor([0, 2, 1, 0]), 200, g)
    assert sample.shape == (4, 200, 2)
    assert (sample[..., 0] == torch.tensor([0.0, 2.0, 1.0, 0.0]).unsqueeze(1)).all()  # each its own task
    assert set(sample[0, :, 1].tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}  # uniform over the kept rows
    assert set(sample[1, :, 1].tolist()) == {10.0, 11.0}
    replay.add(0, torch.tensor([[0.0, 7.0]]))  # overwrites the oldest (2)
    assert set(replay.sample(torch.tensor([0]), 200, g)[0, :, 1].tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0}

    saved = replay.state_dict()
    restored = TaskReplay(3, 2, capacity=5, device=torch.device("cpu"))
    restored.load_state_dict(saved)
    assert torch.equal(restored.count, replay.count)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    tasks = torch.tensor([0, 1, 2, 2])
    assert torch.equal(replay.sample(tasks, 50, g1), restored.sample(tasks, 50, g2))
    replay.add(0, torch.tensor([[0.0, 8.0]]))
    restored.add(0, torch.tensor([[0.0, 8.0]]))  # the write position survives the round trip
    assert torch.equal(replay.sample(tasks, 50, g1), restored.sample(tasks, 50, g2))
    replay.clear(1)
    assert replay.sizes.tolist() == [5, 0, 2]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, message", [
    ("algo.num_prior_episodes=0", "algo.num_prior_episodes must be >= 1, got 0"),
    ("algo.tau=1.5", "algo.tau must be in \\(0, 1\\], got 1.5"),
    ("algo.kl_weight=-1", "algo.kl_weight must be >= 0"),
    ("algo.factor_rank=-1", "algo.factor_rank must be >= 0, got -1"),
    ("algo.exploration_episodes=0", "algo.exploration_episodes must be >= 1, got 0"),
    ("algo.num_extra_posterior_episodes=0", "num_posterior_episodes \\+ algo.num_extra_posterior_episodes"),
])
def test_bad_settings_fail_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("pearl/nav2d", [override])


def test_weights_only_state_loads():
    torch.manual_seed(0)
    trained = _learner()
    trained.update_on(torch.randn(2, 6, 5), torch.randn(2, 4, 8), torch.randn(2, 3), torch.randn(2, 4, 2))
    state = trained.state_dict() | {"optimizer": None}  # what the benchmark keeps
    torch.manual_seed(1)
    fresh = _learner()
    fresh.load_state_dict(state)
    for key, value in _tensors(trained.state_dict()).items():
        if not key.startswith("/optimizer"):
            assert torch.equal(_tensors(fresh.state_dict())[key], value), key


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_learner_on_the_device_updates_and_adapts_as_on_the_cpu(device, rank):
    """device=cuda: three gradient steps on the same data move every network, the
    temperature and the optimisers' moments as on the CPU, and adaptation draws the same z."""
    torch.manual_seed(0)
    cpu = _learner(kl_weight=0.3, factor_rank=rank, learn_alpha=True)
    other = PearlLearner(cpu.cfg, copy.deepcopy(cpu.policy), cpu.train_tasks, max_steps=5, device=device)
    other.load_state_dict(cpu.state_dict())
    g = torch.Generator().manual_seed(2)
    data = [torch.randn(2, 6, 5, generator=g), torch.randn(2, 4, 8, generator=g), torch.randn(2, 3, generator=g),
            torch.randn(2, 4, 2, generator=g)]
    data[1][..., -1] = 0.0  # not terminated
    before = {k: v.clone() for k, v in _tensors(cpu.state_dict()).items()}
    for _ in range(3):
        a, b = cpu.update_on(*data), other.update_on(*(x.to(device) for x in data))
        assert a.keys() == b.keys() and len(a) == 5  # qf, kl, vf, policy, alpha
        for key in a:
            assert b[key].item() == pytest.approx(a[key].item(), rel=1e-4, abs=1e-6), key
    moved, after = _tensors(other.state_dict()), _tensors(cpu.state_dict())
    for key, value in after.items():
        torch.testing.assert_close(moved[key].cpu(), value, rtol=1e-4, atol=1e-5, msg=key)
    changed = {key.split("/")[1] for key in before if not torch.equal(before[key], after[key])}
    assert changed == {"policy", "encoder", "qf1", "qf2", "vf", "target_vf", "log_alpha"}
    assert {key.split("/")[2] for key in after if key.startswith("/optimizer/")} == {  # Adam's moments, compared
        "policy", "qf", "vf", "encoder", "alpha"}
    batch = _batch(2, 2, 4, 2, 2, [[4, 2], [3, 1]])
    z_cpu = cpu.adapt(cpu.init_adaptation(batch.tasks, seed=5), batch).z
    torch.testing.assert_close(other.adapt(other.init_adaptation(batch.tasks, seed=5), batch).z, z_cpu,
                               rtol=1e-4, atol=1e-5)


def test_too_many_sampled_tasks_is_a_config_error():
    with pytest.raises(ConfigError, match="num_tasks_sample=5 exceeds the 3 train tasks"):
        PearlLearner(PearlConfig(latent_dim=2), LatentGaussianMLPPolicy(2, 2, 2), [Task("t")] * 3, 5)


# ----------------------------------------------------------------------------- end to end


def test_pearl_builds_from_its_config_and_satisfies_the_protocol():
    from metarl.algos import MetaLearner
    from metarl.trainer import build

    _, learner = build(load_config("pearl/nav2d", ["tasks.options.num_train_tasks=6"]))
    assert isinstance(learner, MetaLearner) and isinstance(learner, PearlLearner)
    spec = learner.policy_spec
    assert (spec.kind, spec.latent_dim, spec.std_type, spec.squash) == ("latent_gaussian_mlp", 5, "head", True)
    assert spec.max_std == pytest.approx(math.exp(2)) and spec.min_std == pytest.approx(math.exp(-20))
    assert learner.replay.data.shape[0] == 6  # one buffer per train task


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rank", [0, 1])
def test_train_pearl_nav2d_end_to_end(tmp_path, rank):
    run = tmp_path / "run"
    assert cli.main(["train", "pearl/nav2d", *TINY, "iterations=2", f"algo.factor_rank={rank}", f"run_dir={run}"]) == 0
    rows = _rows(run)
    assert [r["iteration"] for r in rows] == [0, 1]
    for key in ("train/return_pre", "train/return_post", "loss/qf", "loss/vf", "loss/policy", "loss/kl"):
        assert all(math.isfinite(r[key]) for r in rows), key
    # iteration 1 rolls 2 tasks x (1 prior + 1 posterior + 1 extra) episodes of at most 10 steps
    assert 0 < rows[1]["env_steps"] - rows[0]["env_steps"] <= 2 * 3 * 10
    ev = json.loads((run / "eval.json").read_text())
    assert ev["unit"] == "episodes"
    assert [(r["k"], r["episodes"]) for r in ev["adaptation"]] == [(0, 0), (1, 1), (2, 2)]
    extra = sorted((run / "checkpoints" / "extra").iterdir())
    assert [p.name for p in extra] == ["iter_000001.pt", "iter_000002.pt"]
    buffers = torch.load(extra[-1], weights_only=True)["extra"]  # beside the optimisers' state
    assert set(buffers) == {"replay", "encoder_buffer", "generator"}
    assert len(buffers["replay"]["rows"]) == 4 and all(r.shape[0] > 0 for r in buffers["replay"]["rows"])
    assert int(buffers["replay"]["count"].sum()) == rows[-1]["env_steps"]  # every step reached the replay


def _tensors(tree, prefix="") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    return {k: v for key, sub in items for k, v in _tensors(sub, f"{prefix}/{key}").items()}


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    assert cli.main(["train", "pearl/nav2d", *TINY, "iterations=2", f"run_dir={resumed}"]) == 0
    assert cli.main(["train", "pearl/nav2d", *TINY, "iterations=3", "resume=true", f"run_dir={resumed}"]) == 0
    assert cli.main(["train", "pearl/nav2d", *TINY, "iterations=3", f"run_dir={straight}"]) == 0
    a, b = _rows(resumed), _rows(straight)
    assert [r["iteration"] for r in a] == [0, 1, 2]

    def learned(row):
        return {k: v for k, v in row.items() if k.startswith(("train/", "loss/")) or k == "env_steps"}

    assert learned(a[2]) == learned(b[2])
    final = [torch.load(run / "checkpoints" / "latest.pt", weights_only=True) for run in (resumed, straight)]
    extra = [torch.load(run / "checkpoints" / f["extra_state"], weights_only=True)
             for run, f in zip((resumed, straight), final, strict=True)]
    for x, y in ((final[0]["learner"], final[1]["learner"]), (extra[0], extra[1])):
        tx, ty = _tensors(x), _tensors(y)
        assert tx.keys() == ty.keys() and tx
        for key in tx:
            assert torch.equal(tx[key], ty[key]), key
