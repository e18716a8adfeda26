"""VariBAD: the ELBO against a hand computation, the VAE's view of a trial, gradient
routing between the RL loss and the encoder, the trial buffer."""

import math

import numpy as np
import pytest
import torch

import metarl.envs
from metarl.algos.rl2 import to_trials
from metarl.algos.varibad import TrialBuffer, VaeTrials, VaribadConfig, VaribadLearner, vae_trials
from metarl.errors import ConfigError
from metarl.policies import VariBADPolicy, gaussian_log_prob
from metarl.sampling import Sampler


def make(**kw) -> VaribadLearner:
    torch.manual_seed(0)
    policy = VariBADPolicy(2, 2, latent_dim=2, gru_size=6, hidden_sizes=[8], init_std=0.5)
    cfg = VaribadConfig(**{"reward_decoder_sizes": [5], "decode_with_action_and_state": False,
                           "vae_subsample_elbos": None, "vae_subsample_decodes": None, "vae_batch_trials": 3} | kw)
    return VaribadLearner(cfg, policy, trial_steps=10)


def collect(learner: VaribadLearner, n=3, episodes=2, max_steps=5, backend="local"):
    dist = metarl.envs.make("nav2d")
    tasks = dist.sample(n, "train", np.random.default_rng(1))
    with Sampler(dist, learner.policy_spec, backend=backend, num_workers=1) as s:
        return s.collect(tasks, learner.policy_params, episodes, seed=4, max_steps=max_steps)


def test_vae_view_of_a_trial_reads_every_transition_once():
    """x[t] is what the encoder read at step t and x[len] the final transition; next_obs is
    the following observation inside an episode and the episode's final one at its end."""
    learner = make()
    batch = collect(learner)
    trials = to_trials(batch, learner.policy, torch.device("cpu"))
    v = vae_trials(trials, 2)
    n, h = v.mask.shape
    assert v.x.shape == (n, h + 1, 2 + 2 + 2)
    for i in range(n):
        steps = int(v.mask[i].sum())
        assert steps == 10
        for t in range(steps):
            episode, step = divmod(t, 5)
            assert torch.equal(v.obs[i, t], batch.obs[i, episode, step])
            assert torch.equal(v.actions[i, t], batch.actions[i, episode, step])
            expected_next = batch.last_obs[i, episode] if step == 4 else batch.obs[i, episode, step + 1]
            assert torch.equal(v.next_obs[i, t], expected_next)
            # what the encoder reads after step t: the action, the reward and s' (the next
            # episode's first observation, flagged new, at an episode boundary)
            following = v.x[i, t + 1]
            assert torch.equal(following[2:4], batch.actions[i, episode, step])
            assert following[4] == batch.rewards[i, episode, step]
            assert following[5] == float(step == 4 and t + 1 < steps)
        assert torch.equal(v.x[i, steps, :2], batch.last_obs[i, -1])


def _tiny_trials(n: int = 2, h: int = 3) -> tuple[VaeTrials, list[int], torch.Tensor]:
    """Two trials of 3 and 2 steps (padded to 3), and the draws of their posteriors' m_t."""
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    trials = VaeTrials(x=torch.randn(n, h + 1, 6, generator=g), obs=torch.randn(n, h, 2, generator=g),
                       actions=torch.randn(n, h, 2, generator=g), rewards=torch.randn(n, h, generator=g) * mask,
                       next_obs=torch.randn(n, h, 2, generator=g), mask=mask)
    return trials, [3, 2], torch.randn(n, h + 1, 2, generator=g)


def _kl_by_hand(learner: VaribadLearner, trials: VaeTrials, lengths: list[int]) -> list[list[float]]:
    """KL(q_t || q_{t-1}) for t = 0..length of each trial, q_{-1} = N(0, I), each trial's
    posteriors computed alone."""
    out = []
    for i, length in enumerate(lengths):
        with torch.no_grad():
            mean, logvar, _ = learner.policy.encode(trials.x[i:i + 1, :length + 1], torch.zeros(1, 6))
        mean, logvar = mean[0], logvar[0]
        prev_mean, prev_logvar, kls = torch.zeros(2), torch.zeros(2), []
        for t in range(length + 1):
            kl = 0.0
            for d in range(2):
                var_q, var_p = math.exp(logvar[t, d]), math.exp(prev_logvar[d])
                kl += 0.5 * (math.log(var_p / var_q) + (var_q + float(mean[t, d] - prev_mean[d]) ** 2) / var_p - 1)
            kls.append(kl)
            prev_mean, prev_logvar = mean[t], logvar[t]
        out.append(kls)
    return out


def test_elbo_terms_by_hand_on_a_tiny_sequence():
    """Every posterior q_0..q_H decodes every reward of its trial (past and future), KL to
    the previous posterior with N(0, I) first; each trial's posteriors computed alone (no
    padding), loops instead of the learner's gathers."""
    learner = make(kl_weight=0.3)
    trials, lengths, noise = _tiny_trials()
    n = len(lengths)
    terms = learner.elbo_loss(trials, noise)

    reward = 0.0
    for i, length in enumerate(lengths):
        with torch.no_grad():
            mean, logvar, _ = learner.policy.encode(trials.x[i:i + 1, :length + 1], torch.zeros(1, 6))
        mean, logvar = mean[0], logvar[0]
        for t in range(length + 1):
            m = mean[t] + torch.exp(0.5 * logvar[t]) * noise[i, t]
            for j in range(length):
                with torch.no_grad():
                    r_hat = learner.reward_decoder(torch.cat([m, trials.next_obs[i, j]]))[0]
                reward += float((r_hat - trials.rewards[i, j]) ** 2)
    kl = sum(map(sum, _kl_by_hand(learner, trials, lengths)))
    terms = {k: v.detach() for k, v in terms.items()}
    assert float(terms["reward"]) == pytest.approx(reward / n, rel=1e-5)
    assert float(terms["kl"]) == pytest.approx(kl / n, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx((reward + 0.3 * kl) / n, rel=1e-5)
    assert float(terms["state"]) == 0.0


def test_subsampled_elbo_picks_only_valid_posteriors_and_rewards():
    learner = make()
    valid = torch.tensor([[True] * 6 + [False] * 4, [True] * 3 + [False] * 7])
    idx, ok = learner._pick(valid, 4, replacement=False)
    assert idx.shape == (2, 4)
    assert ok[0].all() and ok[1].sum() == 3  # three valid positions in the second row
    assert (idx[0] < 6).all() and len(set(idx[0].tolist())) == 4  # distinct
    assert (idx[1][ok[1]] < 3).all()
    idx, ok = learner._pick(valid, 50, replacement=True, rows=7)
    assert idx.shape == (2, 7, 50) and ok.all()
    assert (idx[0] < 6).all() and (idx[1] < 3).all() and set(idx[1].flatten().tolist()) == {0, 1, 2}


def test_a_subsampled_elbo_takes_the_kl_of_its_own_posteriors_only():
    """vae_subsample_elbos=2: the KL term sums KL(q_t || q_{t-1}) over the two posteriors
    whose reconstructions each trial's ELBO uses (the reference's compute_kl_loss at its
    elbo_indices), not over all H + 1, which on a 5,000-step Meta-World trial would weigh
    the KL ~100 x against 50 reconstructions."""
    learner = make(kl_weight=0.3, vae_subsample_elbos=2)
    trials, lengths, noise = _tiny_trials()
    picked = []
    pick = learner._pick

    def spy(valid, k, replacement, rows=None):
        out = pick(valid, k, replacement, rows)
        picked.append(out)
        return out

    learner._pick = spy
    terms = learner.elbo_loss(trials, noise)
    (elbos, ok), _ = picked
    assert elbos.shape == (2, 2) and ok.all()
    by_hand = _kl_by_hand(learner, trials, lengths)
    expected = sum(by_hand[i][t] for i in range(2) for t in elbos[i].tolist()) / 2
    assert float(terms["kl"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["kl"]) < sum(map(sum, by_hand)) / 2  # fewer (positive) terms than all posteriors'


@pytest.mark.parametrize("through", [False, True])
def test_the_rl_loss_reaches_the_encoder_only_when_asked(through):
    learner = make(rl_loss_through_encoder=through)
    policy = learner.policy
    x = torch.randn(3, 4, 6)
    mean_z, logvar_z, _ = policy.encode(x, policy.initial_state(3))
    mean, std, value = policy.heads(x[..., :2], mean_z, logvar_z, through_encoder=through)
    (gaussian_log_prob(mean, std, torch.randn(3, 4, 2)).sum() + value.sum()).backward()
    encoder_grads = [p.grad for p in policy.encoder_parameters()]
    if through:
        assert all(gr is not None for gr in encoder_grads) and any(gr.abs().sum() > 0 for gr in encoder_grads)
    else:
        assert all(gr is None for gr in encoder_grads)
    assert all(p.grad is not None for p in policy.actor.parameters())
    in_rl = {id(p) for group in learner.optimizer.param_groups for p in group["params"]}
    assert all((id(p) in in_rl) == through for p in policy.encoder_parameters())


def test_update_trains_policy_and_encoder_and_fills_the_buffer():
    learner = make()
    batch = collect(learner)
    before = {k: v.clone() for k, v in learner.policy.state_dict().items()}
    stats = learner.update(batch)
    assert len(learner.buffer) == 3
    assert all(math.isfinite(v) for v in stats.values()) and stats["loss/vae_kl"] > 0
    after = learner.policy.state_dict()
    assert not torch.equal(before["gru.weight_hh_l0"], after["gru.weight_hh_l0"])  # the VAE moved it
    assert not torch.equal(before["actor.0.weight"], after["actor.0.weight"])


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_vae_max_grad_norm_clips_the_encoder_and_each_decoder_on_its_own(clip):
    learner = make(state_decoder=True, vae_max_grad_norm=clip)
    learner.update(collect(learner))
    norms = []
    step = learner.vae_optimizer.step

    def record(*args, **kwargs):
        norms.append([torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in part])).item()
                      for part in learner._vae_parts()])
        return step(*args, **kwargs)

    learner.vae_optimizer.step = record
    learner.vae_update(steps=1)
    assert len(norms) == 1 and len(norms[0]) == 3  # encoder, reward decoder, state decoder
    if clip is None:
        assert min(norms[0]) > 1e-2  # what the clip below has to act on
    else:
        assert max(norms[0]) == pytest.approx(clip, rel=1e-4)


def test_the_clipped_huber_value_loss_by_hand():
    """The reference's 0.5 max(huber(V - R), huber(V_clip - R)), V_clip the collection's
    value moved at most ppo_clip (0.1) towards V; the squared error otherwise."""
    learner = make(value_loss="clipped_huber", ppo_clip=0.1)
    value, old, returns = torch.tensor([0.5, 1.95, -0.2]), torch.tensor([0.0, 0.0, 0.0]), torch.tensor([2.0, 2.0, -0.15])
    # huber(-1.5) = 1.0 and the clipped 0.1's huber(-1.9) = 1.4; huber(-0.05) = 0.00125 and
    # huber(-1.9) = 1.4; huber(-0.05) = 0.00125 and the clipped -0.1's huber(0.05) too.
    torch.testing.assert_close(learner._value_loss(value, old, returns), torch.tensor([0.7, 0.7, 0.000625]))
    torch.testing.assert_close(make()._value_loss(value, old, returns), (value - returns) ** 2)
    stats = learner.update(collect(learner))
    assert math.isfinite(stats["loss/value"]) and stats["loss/value"] > 0
    with pytest.raises(ConfigError, match="algo.value_loss must be mse or clipped_huber, got 'huber'"):
        VaribadConfig(value_loss="huber")


def test_ppo_takes_num_minibatches_steps_per_epoch_when_they_do_not_divide_the_steps():
    """3 trials x 2 episodes x 5 steps = 30 steps in 4 minibatches: 4 Adam steps per epoch
    (sizes 8, 8, 7, 7), not a fifth on the 2 steps left over."""
    learner = make(ppo_epochs=2, num_minibatches=4, vae_updates=1)
    batch = collect(learner)
    assert int(batch.mask.sum()) == 30
    learner.update(batch)
    steps = {int(s["step"]) for s in learner.optimizer.state.values()}
    assert steps == {2 * 4}


def test_vae_pretraining_fills_the_buffer_and_trains_the_vae_before_the_first_policy_update(tmp_path):
    from metarl.algos.base import TrainContext
    from metarl.rundir import RunDir
    from metarl.seeding import Seeds

    learner = make(vae_pretrain_collections=2, vae_pretrain_updates=5, vae_updates=1, num_minibatches=2)
    dist = metarl.envs.make("nav2d")
    policy_before = learner.policy.actor[0].weight.clone()
    with Sampler(dist, learner.policy_spec, backend="local") as s:
        def step(i):
            ctx = TrainContext(i, dist, s, Seeds(0), 3, 2, 5, RunDir(tmp_path))
            return ctx, learner.train_step(ctx)

        ctx, metrics = step(0)
        assert len(learner.buffer) == 3 * 3  # two pretraining collections and the iteration's own
        assert ctx.env_steps == 3 * (3 * 2 * 5)
        vae_steps = {int(v["step"]) for v in learner.vae_optimizer.state.values()}
        assert vae_steps == {5 + 1} and "pretrain/vae_loss" in metrics
        assert {int(v["step"]) for v in learner.optimizer.state.values()} == {2 * 2}  # PPO once
        assert not torch.equal(policy_before, learner.policy.actor[0].weight)
        tasks = [ctx.train_tasks(draw=k) for k in range(3)]
        assert len({tuple(t.params["goal"]) for ts in tasks for t in ts}) == 9  # each collection its own tasks
        assert learner.state_dict()["vae_pretrained"]
        _, metrics = step(1)  # pretrains once
    assert len(learner.buffer) == 4 * 3 and "pretrain/vae_loss" not in metrics
    with pytest.raises(ConfigError, match="vae_pretrain_collections >= 1"):
        VaribadConfig(vae_pretrain_updates=10)


def test_trial_buffer_wraps_and_round_trips():
    buf = TrialBuffer(capacity=3, length=4, obs_dim=1, act_dim=1, input_dim=4)

    def trials(start, n, length):
        r = torch.arange(start, start + n, dtype=torch.float32).view(n, 1).expand(n, length)
        return VaeTrials(x=torch.zeros(n, length + 1, 4), obs=r.unsqueeze(-1), actions=r.unsqueeze(-1), rewards=r,
                         next_obs=r.unsqueeze(-1), mask=torch.ones(n, length, dtype=torch.bool))

    buf.add(trials(0, 2, 4))
    buf.add(trials(2, 2, 2))  # wraps: trial 3 overwrites trial 0 (and is shorter)
    assert len(buf) == 3
    assert buf.data["rewards"][:, 0].tolist() == [3.0, 1.0, 2.0]
    assert buf.data["mask"][0].tolist() == [True, True, False, False]
    clone = TrialBuffer(capacity=3, length=4, obs_dim=1, act_dim=1, input_dim=4)
    clone.load_state_dict(buf.state_dict())
    assert clone.count == 4 and all(torch.equal(clone.data[k], v) for k, v in buf.data.items())
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(buf.sample(5, g1).rewards, clone.sample(5, g2).rewards)


def test_state_round_trips_and_a_weights_only_state_loads():
    learner = make(state_decoder=True)
    learner.update(collect(learner))
    state = learner.state_dict()
    clone = make(state_decoder=True)
    clone.load_state_dict(state)
    for a, b in ((learner.policy, clone.policy), (learner.reward_decoder, clone.reward_decoder),
                 (learner.state_decoder, clone.state_decoder)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert clone.vae_optimizer.state_dict()["state"].keys() == learner.vae_optimizer.state_dict()["state"].keys()
    weights = make(state_decoder=True)
    weights.load_state_dict({**state, "optimizer": None})  # what a finished benchmark run keeps
    assert torch.equal(weights.policy.log_std, learner.policy.log_std)
    assert not weights.vae_optimizer.state_dict()["state"]


def test_policy_inputs_are_normalised_by_their_running_moments():
    """After an update the policy's input buffers hold the mean and std of what it saw
    (state, posterior mean, log-variance on every valid step), and :meth:`heads` applies them."""
    learner = make()
    batch = collect(learner)
    trials = to_trials(batch, learner.policy, torch.device("cpu"))
    with torch.no_grad():
        mean_z, logvar_z, _ = learner.policy.encode(trials.x, learner.policy.initial_state(3))
    seen = torch.cat([trials.x[..., :2], mean_z, logvar_z], -1)[trials.mask].double()
    learner.update(batch)
    policy = learner.policy
    torch.testing.assert_close(policy.input_mean, seen.mean(0).float())
    torch.testing.assert_close(policy.input_std, seen.std(0).float(), rtol=1e-5, atol=1e-6)
    obs, m, lv = torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 2)
    raw = torch.cat([obs, m, lv], -1)
    with torch.no_grad():
        got = policy.heads(obs, m, lv)[0]
        expected = policy.actor((raw - policy.input_mean) / policy.input_std)
    torch.testing.assert_close(got, expected)
