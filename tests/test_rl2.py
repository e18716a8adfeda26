"""RL²: trials, recurrent log-probs, advantages per episode and over the whole trial (trial_gae), a smoke run."""

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import metarl.envs
from metarl.algos import Rl2Config
from metarl.algos.rl2 import Rl2Learner, to_trials, windows
from metarl.algos.varibad import VaribadConfig, VaribadLearner
from metarl.errors import ConfigError
from metarl.policies import RecurrentGaussianPolicy, VariBADPolicy, gaussian_log_prob
from metarl.sampling import Sampler

ROOT = Path(__file__).resolve().parent.parent


def make(seed=0, kind="rl2"):
    """nav2d, a recurrent policy and its learner: RL²'s, or VariBAD's (whose encoder state
    is carried the same way)."""
    torch.manual_seed(seed)
    dist = metarl.envs.make("nav2d")
    if kind == "varibad":
        policy = VariBADPolicy(2, 2, latent_dim=3, gru_size=16, hidden_sizes=[8], init_std=0.3)
        learner = VaribadLearner(VaribadConfig(), policy, trial_steps=60)
    else:
        policy = RecurrentGaussianPolicy(2, 2, gru_size=16, encoder_sizes=[8], init_std=0.3)
        learner = Rl2Learner(Rl2Config(gru_size=16), policy)
    policy.reward_scale.fill_(0.5)  # the scale must reach the workers with the parameters
    return dist, policy, learner


def recompute(policy, trials, reset_at_second_episode=False):
    h = policy.initial_state(trials.x.shape[0])
    if not reset_at_second_episode:
        mean, std, _, _ = policy(trials.x, h)
        return gaussian_log_prob(mean, std, trials.actions)
    out = []
    for t in range(trials.x.shape[1]):  # step by step, zeroing the state at each new episode
        if t > 0:
            h = torch.where(trials.x[:, t, -1:].bool(), torch.zeros_like(h), h)
        mean, std, _, h = policy.step(trials.x[:, t], h)
        out.append(gaussian_log_prob(mean, std, trials.actions[:, t]))
    return torch.stack(out, 1)


@pytest.mark.parametrize("kind", ["rl2", "varibad"])
@pytest.mark.parametrize("backend, workers", [("local", 1), ("process", 2), ("ray", 2)])
def test_state_carried_within_trials_and_reset_between_them(backend, workers, kind):
    if backend == "ray":
        pytest.importorskip("ray")
    dist, policy, learner = make(kind=kind)
    tasks = dist.sample(5, "train", np.random.default_rng(0))
    try:
        with Sampler(dist, policy.spec, backend=backend, num_workers=workers) as s:
            s.collect(tasks[:2], learner.policy_params, 2, seed=9, max_steps=7)  # state must not leak
            batch = s.collect(tasks, learner.policy_params, episodes=3, seed=1, max_steps=20)
    finally:
        if backend == "ray":
            import ray

            ray.shutdown()
    trials = to_trials(batch, policy, torch.device("cpu"))
    assert trials.x.shape == (5, 60, 2 + 2 + 2)
    with torch.no_grad():
        logp = recompute(policy, trials)
        reset = recompute(policy, trials, reset_at_second_episode=True)
    m = trials.mask
    torch.testing.assert_close(logp[m], trials.log_probs[m], atol=1e-5, rtol=1e-5)
    first = torch.zeros_like(m)
    first[:, :20] = True
    torch.testing.assert_close(reset[first], trials.log_probs[first], atol=1e-5, rtol=1e-5)
    assert (reset[m & ~first] - trials.log_probs[m & ~first]).abs().max() > 1e-3  # control


def test_trials_are_time_ordered_with_previous_action_reward_and_flags():
    dist, policy, _ = make()
    from metarl.envs import Task

    tasks = [Task("nav2d", {"goal": [0.05, 0.0]})]  # reached quickly: short episodes
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect(tasks, {k: v for k, v in [*policy.named_parameters(), *policy.named_buffers()]},
                          episodes=3, seed=0, max_steps=10)
    trials = to_trials(batch, policy, torch.device("cpu"))
    lengths = batch.lengths[0].tolist()
    assert trials.mask.sum() == sum(lengths)
    starts = np.cumsum([0] + lengths[:-1])
    flags = trials.x[0, : sum(lengths), -1]
    assert flags.nonzero().flatten().tolist() == list(starts)
    # previous action of step t is the action of step t-1, across the episode boundary
    s = starts[1]
    torch.testing.assert_close(trials.x[0, s, 2:4], trials.actions[0, s - 1])
    torch.testing.assert_close(trials.x[0, s, 4], trials.rewards[0, s - 1] * 0.5)


def test_advantages_bootstrap_truncation_and_not_termination():
    _, policy, learner = make()
    learner.cfg = Rl2Config(gru_size=16, gamma=0.9, gae_lambda=1.0)
    from metarl.algos.rl2 import Trials

    n, length, i = 1, 4, 6
    mask = torch.ones(n, length, dtype=torch.bool)
    term = torch.tensor([[False, False, False, True]])
    trunc = torch.tensor([[False, True, False, False]])
    trials = Trials(x=torch.randn(n, length, i), actions=torch.zeros(n, length, 2),
                    rewards=torch.tensor([[1.0, 1.0, 1.0, 1.0]]), log_probs=torch.zeros(n, length),
                    terminated=term, truncated=trunc, ends=term | trunc, mask=mask,
                    boot_x=torch.randn(n, length, i))
    with torch.no_grad():
        _, _, values, states = policy(trials.x, policy.initial_state(1))
        adv, _ = learner.advantages(trials, values, states)
        boot = policy(trials.boot_x[:, 1:2], states[:, 1])[2][0, 0]
    v = values[0]
    expected = torch.stack([1 + 0.9 * v[1] - v[0] + 0.9 * (1 + 0.9 * boot - v[1]),
                            1 + 0.9 * boot - v[1],
                            1 + 0.9 * v[3] - v[2] + 0.9 * (1 - v[3]),
                            1 - v[3]])
    torch.testing.assert_close(adv[0], expected)


@pytest.mark.parametrize("algo", ["rl2_ppo", "varibad"])
def test_trial_gae_runs_across_the_trials_episodes_and_ends_only_with_the_trial(algo):
    """algo.trial_gae: episode A (steps 0-1, truncated) then B (2-3, terminated), then
    padding. The recursion crosses A's end, which bootstraps from B's first value; only the
    trial's last step is terminal; padding gets nothing. By hand, gamma 0.9, lambda 0.5."""
    _, policy, learner = make()
    learner.cfg = (Rl2Config if algo == "rl2_ppo" else VaribadConfig)(gamma=0.9, gae_lambda=0.5, trial_gae=True)
    from metarl.algos.rl2 import Trials, trial_last_step

    mask = torch.tensor([[True, True, True, True, False]])
    term = torch.tensor([[False, False, False, True, False]])
    trunc = torch.tensor([[False, True, False, False, False]])
    rewards = torch.tensor([[1.0, -2.0, 0.5, 3.0, 7.0]])
    trials = Trials(x=torch.randn(1, 5, 6), actions=torch.zeros(1, 5, 2), rewards=rewards,
                    log_probs=torch.zeros(1, 5), terminated=term, truncated=trunc, ends=term | trunc, mask=mask,
                    boot_x=torch.randn(1, 5, 6))
    assert trial_last_step(mask).tolist() == [[False, False, False, True, False]]
    values = torch.tensor([[0.3, -0.4, 1.1, 0.8, 5.0]])
    adv, targets = learner.advantages(trials, values, states=None)
    v, r, k = values[0], rewards[0], 0.9 * 0.5
    d = [r[0] + 0.9 * v[1] - v[0], r[1] + 0.9 * v[2] - v[1], r[2] + 0.9 * v[3] - v[2], r[3] - v[3]]
    a3 = d[3]
    a2 = d[2] + k * a3
    a1 = d[1] + k * a2
    a0 = d[0] + k * a1
    torch.testing.assert_close(adv[0], torch.stack([a0, a1, a2, a3, torch.tensor(0.0)]))
    torch.testing.assert_close(targets, (adv + values) * mask)
    # per episode (the default) A's advantages do not see B's rewards; over the trial they do
    later = rewards.clone()
    later[0, 3] += 5.0
    moved = learner.advantages(trials._replace(rewards=later), values, states=None)[0]
    assert (moved[0, :2] - adv[0, :2] > 0).all()
    learner.cfg = (Rl2Config if algo == "rl2_ppo" else VaribadConfig)(gamma=0.9, gae_lambda=0.5)
    with torch.no_grad():
        _, _, values, states = policy(trials.x, policy.initial_state(1))
    per_episode = [learner.advantages(trials._replace(rewards=r), values, states)[0] for r in (rewards, later)]
    torch.testing.assert_close(per_episode[0][0, :2], per_episode[1][0, :2])


def test_update_changes_policy_and_is_finite():
    dist, policy, learner = make()
    tasks = dist.sample(4, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect(tasks, learner.policy_params, episodes=2, seed=0, max_steps=15)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = learner.update(batch)
    assert all(np.isfinite(v) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    assert learner.policy.reward_scale.item() != 0.5  # running reward statistics took over


def test_entropy_bonus_holds_the_std_up_and_the_logged_std_is_the_policys():
    """The same batch and start, with and without ``ent_coef``: the bonus leaves a larger std
    (a sign error would shrink it), and ``policy/std`` is the mean std the last minibatch saw
    (one Adam step before the final one, so within 1%)."""
    stds = {}
    for ent_coef in (0.0, 0.5):
        dist, policy, learner = make()
        learner.cfg = Rl2Config(gru_size=16, ent_coef=ent_coef)
        tasks = dist.sample(4, "train", np.random.default_rng(0))
        with Sampler(dist, policy.spec, backend="local") as s:
            batch = s.collect(tasks, learner.policy_params, episodes=2, seed=0, max_steps=15)
        logged = learner.update(batch)["policy/std"]
        stds[ent_coef] = policy.log_std.exp().detach()
        assert logged == pytest.approx(stds[ent_coef].mean().item(), rel=1e-2)
    assert (stds[0.5] > stds[0.0]).all() and (stds[0.5] > 0.3).all()


@pytest.mark.parametrize("target_kl, steps", [(None, 10 * 2), (1e-6, 1), (1e9, 10 * 2)])
def test_target_kl_stops_the_epochs_at_the_first_minibatch_past_it(target_kl, steps):
    """The first minibatch always steps (its ratios are 1 up to rounding: KL ~1e-9); after
    it, a tiny target stops the update (one step moves this policy by a KL of ~1e-4), a
    huge one never does, and no target runs every epoch."""
    dist, policy, learner = make()
    learner.cfg = Rl2Config(gru_size=16, num_minibatches=2, target_kl=target_kl)
    tasks = dist.sample(4, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect(tasks, learner.policy_params, episodes=2, seed=0, max_steps=15)
    stats = learner.update(batch)
    assert stats["loss/gradient_steps"] == steps
    assert (abs(stats["loss/approx_kl"]) < 1e-6) == (steps == 1)  # the stats are the last step's
    stopped = steps == 1
    assert ("loss/stop_kl" in stats) == stopped
    if stopped:
        assert stats["loss/stop_kl"] > 1.5 * target_kl


def test_windows_start_from_the_trials_states_and_cover_every_step():
    """Truncated-BPTT windows (width 7 on trials of up to 30 steps: padding, and a window
    starting mid-episode) give the same log-probs and values as the whole trials."""
    dist, policy, learner = make()
    tasks = dist.sample(3, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect(tasks, learner.policy_params, episodes=2, seed=2, max_steps=15)
    trials = to_trials(batch, policy, torch.device("cpu"))
    with torch.no_grad():
        mean, std, values, states = policy(trials.x, policy.initial_state(3))
        whole = gaussian_log_prob(mean, std, trials.actions)
        h0, mask, (x, actions, logp_w, values_w) = windows(7, states, trials.mask, trials.x, trials.actions,
                                                           whole, values)
        mean_w, std_w, value_w, _ = policy(x, h0)
    assert trials.mask.shape[1] == 30 and x.shape == (3 * 5, 7, trials.x.shape[-1])
    assert int(mask.sum()) == int(trials.mask.sum())
    torch.testing.assert_close(gaussian_log_prob(mean_w, std_w, actions)[mask], logp_w[mask],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value_w[mask], values_w[mask], atol=1e-5, rtol=1e-5)
    h0_only_first, *_ = windows(30, states, trials.mask, trials.x)
    assert h0_only_first.abs().sum() == 0  # one window per trial: each starts from the zero state


def test_staggered_windows_cut_half_a_window_later_and_cross_the_episode_boundaries():
    """Trials of two 15-step episodes in windows of 15: cut at the episodes' starts no window
    holds a boundary (no gradient would cross it); offset by 7, windows of 7, 15 and 8 steps
    each start from the state the rollout had there, one holds each boundary, and together
    they give the whole trials' log-probs."""
    dist, policy, learner = make()
    tasks = dist.sample(3, "train", np.random.default_rng(0))
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect(tasks, learner.policy_params, episodes=2, seed=2, max_steps=15)
    trials = to_trials(batch, policy, torch.device("cpu"))
    assert batch.mask.all() and trials.mask.shape[1] == 30  # nav2d's episodes run to the cap here
    new_episode = trials.x[..., -1]
    with torch.no_grad():
        mean, std, _, states = policy(trials.x, policy.initial_state(3))
        whole = gaussian_log_prob(mean, std, trials.actions)
        aligned = windows(15, states, trials.mask, new_episode)
        assert (aligned[2][0][:, 1:] == 0).all()  # a new episode only ever at a window's start
        h0, mask, (x, actions, logp_w, flag) = windows(15, states, trials.mask, trials.x, trials.actions,
                                                       whole, new_episode, offset=7)
        mean_w, std_w, _, _ = policy(x, h0)
    assert mask.sum(1).tolist() == [7, 15, 8] * 3
    assert (flag[1::3, 8] == 1).all() and flag[1::3, :8].sum() == flag[1::3, 9:].sum() == 0
    torch.testing.assert_close(h0.reshape(3, 3, -1)[:, 1:], states[:, [6, 21]])
    assert (h0[::3] == 0).all()
    torch.testing.assert_close(gaussian_log_prob(mean_w, std_w, actions)[mask], whole.flatten(), atol=1e-5, rtol=1e-5)
    assert (x[~mask] == 0).all()
    with pytest.raises(ValueError, match=r"window offset must be in \[0, 15\), got 15"):
        windows(15, states, trials.mask, offset=15)
    # Ragged trials (3, 9 and 0 valid steps of 10) offset past some of their ends: the
    # windows hold each valid step once, an empty window is dropped, none starts past the end.
    ragged = torch.arange(10)[None] < torch.tensor([[3], [9], [0]])
    steps = torch.arange(30.0).reshape(3, 10) + 1
    h0, mask, (got,) = windows(8, states[:, :10], ragged, steps * ragged, offset=4)
    assert mask.sum(1).tolist() == [3, 4, 5] and got[mask].tolist() == steps[ragged].tolist()
    torch.testing.assert_close(h0[2], states[1, 3])
    h0, mask, _ = windows(30, states[:, :10], ragged, offset=15)  # the offset past every trial's end
    assert mask.sum(1).tolist() == [3, 9] and (h0 == 0).all()


def test_a_staggered_update_alternates_the_cuts_by_epoch(monkeypatch):
    """One epoch: the aligned cut alone, the same update bit for bit; more: the odd epochs
    train on the windows offset by half a window (on 30-step trials, windows of 15: two per
    trial aligned, three offset by 7), another update with as many gradient steps."""
    import metarl.algos.rl2 as rl2

    offsets, rows = [], []
    cut = rl2.windows
    monkeypatch.setattr(rl2, "windows", lambda *args, offset=0: offsets.append(offset) or cut(*args, offset=offset))
    dist, policy, _ = make()
    forward = policy.forward
    monkeypatch.setattr(policy, "forward", lambda x, h: rows.append(x.shape[0]) or forward(x, h))
    learner = Rl2Learner(Rl2Config(gru_size=16, bptt_window=15, bptt_stagger=True, ppo_epochs=3), policy)
    with Sampler(dist, policy.spec, backend="local") as s:
        batch = s.collect(dist.sample(3, "train", np.random.default_rng(0)), learner.policy_params,
                          episodes=2, seed=0, max_steps=15)
    learner.update(batch)
    # The trials, the values after their 6 truncations, then one minibatch per epoch.
    assert offsets == [0, 7] and rows == [3, 6, 6, 9, 6]
    params, steps = {}, {}
    for stagger, epochs in ((False, 1), (True, 1), (False, 2), (True, 2)):
        dist, policy, _ = make()
        learner = Rl2Learner(Rl2Config(gru_size=16, bptt_window=15, bptt_stagger=stagger, ppo_epochs=epochs,
                                       num_minibatches=2), policy)
        tasks = dist.sample(3, "train", np.random.default_rng(0))
        with Sampler(dist, policy.spec, backend="local") as s:
            batch = s.collect(tasks, learner.policy_params, episodes=2, seed=0, max_steps=15)
        steps[stagger, epochs] = learner.update(batch)["loss/gradient_steps"]
        params[stagger, epochs] = torch.cat([p.detach().flatten() for p in policy.parameters()])
    assert torch.equal(params[False, 1], params[True, 1])
    assert not torch.equal(params[False, 2], params[True, 2])
    assert steps == {(False, 1): 2, (True, 1): 2, (False, 2): 4, (True, 2): 4}
    with pytest.raises(ConfigError, match="algo.bptt_stagger needs algo.bptt_window >= 2, got None"):
        Rl2Config(bptt_stagger=True)


def test_update_with_a_window_as_long_as_the_trials_equals_the_whole_trial_update():
    params = []
    for window in (None, 30, 20):
        dist, policy, _ = make()
        learner = Rl2Learner(Rl2Config(gru_size=16, bptt_window=window, ppo_epochs=2), policy)
        tasks = dist.sample(3, "train", np.random.default_rng(0))
        with Sampler(dist, policy.spec, backend="local") as s:
            batch = s.collect(tasks, learner.policy_params, episodes=2, seed=0, max_steps=15)
        learner.update(batch)
        params.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
    assert torch.equal(params[0], params[1])
    assert not torch.equal(params[0], params[2])  # a shorter window is a different update


def test_rl2_cli_run_reports_episodes_and_its_memory_ablation(cli, tmp_path, capfd, monkeypatch):
    result = cli(["train", "rl2_ppo/nav2d", "iterations=2", "meta_batch_size=4", "max_episode_steps=20",
                  "algo.gru_size=8", "eval.num_tasks=3", "eval.adapt_steps=2", "sampler.backend=local",
                  "logger.wandb=false", f"run_dir={tmp_path}"])
    assert result.code == 0, result.stderr
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["unit"] == "episodes" and [r["k"] for r in ev["adaptation"]] == [0, 1, 2]
    resumed = cli(["train", "rl2_ppo/nav2d", "iterations=3", "meta_batch_size=4", "max_episode_steps=20",
                   "algo.gru_size=8", "eval.num_tasks=3", "sampler.backend=local", "logger.wandb=false",
                   "resume=true", f"run_dir={tmp_path}"])
    assert resumed.code == 0, resumed.stderr
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3

    # scripts/rl2_memory.py on this run: the same trials carried, fresh and with another task's state.
    memory = _memory_script()

    def ablate(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["rl2_memory.py", *args])
        capfd.readouterr()
        code = memory.main()
        out, err = capfd.readouterr()
        return code, out, err

    ev = json.loads((tmp_path / "eval.json").read_text())  # the resumed run's final evaluation
    code, out, _ = ablate(str(tmp_path), "--json")  # defaults: the run's own evaluation, as eval.json
    assert code == 0
    out = json.loads(out)
    assert out["actions"] == "sample" and out["tasks"] == 3 and out["episodes"] == len(ev["adaptation"])
    assert out["return"]["carried"] == pytest.approx([row["return_mean"] for row in ev["adaptation"]])
    for actions in ("mean", "sample"):
        code, out, _ = ablate(str(tmp_path), "--actions", actions, "--episodes", "4", "--json")
        assert code == 0
        out = json.loads(out)
        carried, fresh, foreign = (out["return"][arm] for arm in ("carried", "fresh", "foreign"))
        assert len(carried) == len(fresh) == len(foreign) == 4 and "success" not in out  # nav2d: no success
        assert carried[0] == fresh[0] == foreign[0]  # the same first episode
        for other in (fresh, foreign):  # then the state each starts from acts
            assert all(c != o for c, o in zip(carried[1:], other[1:], strict=True))
        if actions == "mean":  # nav2d's episodes start alike: without memory the mean repeats the first
            assert fresh == [fresh[0]] * 4
        for arm, other in (("fresh", fresh), ("foreign", foreign)):
            gap = out["return"][f"carried_minus_{arm}_after_first"]["mean"]
            assert gap == pytest.approx(np.mean(carried[1:]) - np.mean(other[1:]))
    code, out, _ = ablate(str(tmp_path), "--tasks", "1", "--episodes", "2")
    assert code == 0 and "episode 2, return carried - fresh:" in out and "one task: no standard error" in out
    assert "carried - foreign" not in out and "no foreign arm" in out  # no other task to take a state from
    code, _, err = ablate(str(tmp_path / "missing"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "no config.yaml" in err


def _memory_script():
    spec = importlib.util.spec_from_file_location("rl2_memory", ROOT / "scripts" / "rl2_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_scripts_arms_and_paired_difference_by_hand():
    """Each task's mean over episodes 2..K of carried - fresh, then the mean and standard
    error over tasks; success rows only where every task reports one; the states the
    ablated arms hand on."""
    memory = _memory_script()
    carried = {"per_task": {"a": {"returns": [1, 2, 4], "success": [0, 1, 1]},
                            "b": {"returns": [3, 3, 3], "success": [1, 0, 0]}}}
    fresh = {"per_task": {"a": {"returns": [1, 1, 1], "success": [0, 0, 0]},
                          "b": {"returns": [3, 5, 1], "success": [1, 1, 1]}}}
    returns = [memory.per_episode(r, "returns") for r in (carried, fresh)]
    success = [memory.per_episode(r, "success") for r in (carried, fresh)]
    np.testing.assert_array_equal(success[0], [[0, 1, 1], [1, 0, 0]])
    # returns: task a (1 + 3) / 2 = 2, task b (-2 + 2) / 2 = 0; std([2, 0]) / sqrt(2) = 1
    assert memory.paired(*returns) == pytest.approx({"mean": 1.0, "se": 1.0})
    # success: task a (1 + 1) / 2 = 1, task b (-1 - 1) / 2 = -1
    assert memory.paired(*success) == pytest.approx({"mean": 0.0, "se": 1.0})
    assert memory.paired(returns[0][:1], returns[1][:1]) == {"mean": 2.0, "se": None}
    carried["per_task"]["b"]["success"] = [None, None, None]
    assert memory.per_episode(carried, "success") is None
    # The arms' next states: task i continues task i-1's (foreign), or starts anew (fresh).
    dist, _, learner = make()
    state = learner.init_adaptation(dist.sample(3, "test"), 0)
    ended = SimpleNamespace(carry={"h": torch.tensor([[1.0, 1.5], [2.0, 2.5], [3.0, 3.5]])})
    foreign = memory.Ablated(learner, "foreign").adapt(state, ended)
    assert torch.equal(foreign.carry["h"], torch.tensor([[3.0, 3.5], [1.0, 1.5], [2.0, 2.5]]))
    assert foreign.params is state.params
    assert memory.Ablated(learner, "fresh").adapt(state._replace(carry=ended.carry), ended).carry is None


@pytest.mark.parametrize("config, size, unit", [
    ("rl2_ppo/nav2d", ["algo.gru_size=8"], "episodes"),
    ("varibad/nav2d", ["algo.gru_size=8", "algo.vae_pretrain_collections=1", "algo.vae_pretrain_updates=2"], "episodes"),
    ("promp/nav2d", ["policy.hidden_sizes=[8]"], "gradient_steps")])
def test_learners_run_metaworlds_protocol(config, size, unit, cli, tmp_path):
    """RL², VariBAD and ProMP (whose LVC step divides by the log-likelihoods the protocol's
    agent records) through Meta-World's protocol from the CLI, with both evaluation starts:
    the default is recorded as ``adapted``; ProMP, which carries no state, gets the same
    numbers either way and is recorded as starting adapted, the recurrent learners get other
    ones."""
    train = cli(["train", config, "tasks.name=ml1/reach-v3", "iterations=1", "meta_batch_size=2",
                 "episodes_per_task=2", "max_episode_steps=10", *size, "eval.num_tasks=2", "sampler.backend=local",
                 "logger.wandb=false", f"run_dir={tmp_path}"])
    assert train.code == 0, train.stderr
    protocol = []
    for start in ([], ["--evaluation-start", "continued"]):  # the default, then metarl's old start
        # One env, so that its three evaluation episodes are the ones counted (with more, the
        # first episodes of three envs, all truncated at once, would be).
        result = cli(["evaluate", str(tmp_path), "--protocol", "metaworld", "--meta-batch-size", "1",
                      "--goals-per-class", "1", "--max-episode-steps", "10", "--tasks", "2", "--adapt-steps", "1",
                      *start])
        assert result.code == 0, result.stderr
        ev = json.loads((tmp_path / "eval.json").read_text())
        assert ev["unit"] == unit and 0.0 <= ev["metaworld_protocol"]["success_rate"] <= 1.0
        protocol.append(ev["metaworld_protocol"])
    starts = [p["settings"]["evaluation_start"] for p in protocol]
    numbers = [{k: p[k] for k in ("success_rate", "return", "per_task_success")} for p in protocol]
    if unit == "gradient_steps":  # no state carried from one episode to the next: the same episodes
        assert starts == ["adapted", "adapted"] and numbers[0] == numbers[1]
    else:  # the second and third evaluation episodes start elsewhere
        assert starts == ["adapted", "continued"] and numbers[0]["return"] != numbers[1]["return"]


@pytest.mark.parametrize("kind", ["rl2", "varibad"])
@pytest.mark.parametrize("backend, workers", [("local", 1), ("process", 2)])
def test_a_trial_continued_across_collections_equals_one_collection(backend, workers, kind):
    """Adaptation as the carried state: three collections of one episode, each continuing
    the trials from the batch before (``batch.carry``, episodes numbered on), roll what one
    collection of three-episode trials rolls."""
    dist, policy, learner = make(kind=kind)
    tasks = dist.sample(4, "train", np.random.default_rng(3))
    with Sampler(dist, policy.spec, backend=backend, num_workers=workers) as s:
        whole = s.collect(tasks, learner.policy_params, episodes=3, seed=5, max_steps=12)
        state = learner.init_adaptation(tasks)
        parts = []
        for k in range(3):
            part = s.collect(tasks, learner.acting(state), 1, seed=5, max_steps=12, first_episode=k)
            parts.append(part)
            state = learner.adapt(state, part)
    assert state.carry is not None and state.carry["h"].shape == (4, policy.gru_size)
    for key in ("obs", "actions", "rewards", "log_probs", "mask"):
        joined = torch.cat([getattr(p, key) for p in parts], 1)
        torch.testing.assert_close(joined, getattr(whole, key)[:, :, :joined.shape[2]], atol=1e-5, rtol=1e-5,
                                   msg=key)
    torch.testing.assert_close(parts[-1].carry["h"], whole.carry["h"], atol=1e-5, rtol=1e-5)
    # Without the carried state the second episode differs: the GRU state is the adaptation.
    fresh = Sampler(dist, policy.spec, backend="local")
    try:
        restart = fresh.collect(tasks, learner.policy_params, 1, seed=5, max_steps=12, first_episode=1)
    finally:
        fresh.close()
    assert not torch.allclose(restart.actions, parts[1].actions)
