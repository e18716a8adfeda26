"""Meta-World's evaluation protocol at its real shapes, on metarl's vector env."""

from collections import namedtuple

import gymnasium as gym
import numpy as np
import pytest
import torch

import metarl.envs
from metarl.algos.rl2 import Rl2Config, Rl2Learner
from metarl.config import ConfigError
from metarl.envs.metaworld import split_classes
from metarl.metaworld_protocol import (
    PROTOCOL_DEFAULTS,
    LearnerAgent,
    ShardedVectorEnv,
    env_layout,
    protocol_env_fns,
    protocol_settings,
)
from metarl.policies import RecurrentGaussianPolicy

FakeTask = namedtuple("FakeTask", "env_name data")


class _Bench:
    """Just the two attributes metaworld's vector-env builder reads of a benchmark."""

    def __init__(self, classes):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.test_classes = {name: ALL_V3_ENVIRONMENTS[name] for name in classes}
        self.test_tasks = [FakeTask(name, i) for name in classes for i in range(50)]


@pytest.mark.parametrize("benchmark", ["ml1", "ml10", "ml45"])
def test_default_settings_build_metaworlds_own_layout_and_visit_every_goal_once(benchmark, monkeypatch):
    """The defaults at the benchmark's real shapes (its test classes, 50 goals each) pass
    Meta-World's own builder, which deals the goals exactly as env_layout does."""
    import metaworld

    classes = split_classes(benchmark, "pick-place-v3")["test"]
    settings = protocol_settings(benchmark, len(classes))
    assert settings["meta_batch_size"] == PROTOCOL_DEFAULTS[benchmark]["meta_batch_size"]
    bench = _Bench(classes)
    built = []

    class Recorder:  # records the env constructors instead of building 10-45 Sawyer envs
        def __init__(self, env_fns, autoreset_mode=None):
            built.extend(env_fns)

    monkeypatch.setattr(gym.vector, "SyncVectorEnv", Recorder)
    metaworld._make_ml_envs_inner(bench, settings["meta_batch_size"], seed=0, split="test",
                                  total_tasks_per_cls=settings["goals_per_class"], vector_strategy="sync")
    layout = env_layout({c: [t for t in bench.test_tasks if t.env_name == c] for c in classes},
                        settings["meta_batch_size"], settings["goals_per_class"])
    assert [(f.keywords["env_cls"].__name__, f.keywords["tasks"]) for f in built] == \
        [(bench.test_classes[c].__name__, tasks) for c, tasks in layout]
    assert len(layout) == settings["meta_batch_size"]
    for c in classes:  # num_evals rounds: every env visits each of its goals once
        goals = [t.data for name, tasks in layout if name == c for t in tasks]
        assert sorted(goals) == list(range(settings["goals_per_class"]))
    assert all(len(tasks) == settings["num_evals"] for _, tasks in layout)


def test_invalid_settings_name_the_valid_values():
    with pytest.raises(ConfigError, match=r"valid: 1, 2, 5, 10, 25, 50$"):
        protocol_settings("ml1", 1, meta_batch_size=20)
    with pytest.raises(ConfigError, match=r"valid: 5, 10, 20, 25, 40, 50, 100, 200$"):
        protocol_settings("ml10", 5, meta_batch_size=15)  # 3 envs per class do not divide 40 goals
    with pytest.raises(ConfigError, match="goals-per-class"):
        protocol_settings("ml10", 5, goals_per_class=60)
    assert protocol_settings("ml10", 5, meta_batch_size=10)["num_evals"] == 20
    with pytest.raises(ConfigError, match="--evaluation-start must be one of adapted, continued, got 'fresh'"):
        protocol_settings("ml1", 1, evaluation_start="fresh")
    assert protocol_settings("ml1", 1)["evaluation_start"] == "adapted"


def test_protocol_envs_match_metaworlds_own_at_ml1_shape():
    """Same goals per env, same wrappers and settings as gym.make_vec builds; only the env
    class is metarl's (bit-identical) fast subclass."""
    dist = metarl.envs.make("ml1/reach-v3")
    settings = protocol_settings("ml1", 1)
    ours = protocol_env_fns(dist, settings)
    stock = gym.make_vec("Meta-World/ML1-test", env_name="reach-v3", seed=0, vector_strategy="sync",
                         meta_batch_size=settings["meta_batch_size"],
                         total_tasks_per_cls=settings["goals_per_class"])
    try:
        assert len(ours) == len(stock.env_fns) == 10
        for mine, theirs in zip(ours, stock.env_fns, strict=True):
            assert issubclass(mine.keywords["env_cls"], theirs.keywords["env_cls"])
            assert [t.data for t in mine.keywords["tasks"]] == [t.data for t in theirs.keywords["tasks"]]
            rest = {k: v for k, v in theirs.keywords.items() if k not in ("env_cls", "tasks")}
            assert {k: mine.keywords[k] for k in rest} == rest
    finally:
        stock.close()


def _flat_info(info, prefix=""):
    out = {}
    for k, v in info.items():
        if isinstance(v, dict):
            out |= _flat_info(v, f"{prefix}{k}/")
        elif prefix + k != "final_info/episode/t":  # RecordEpisodeStatistics' wall time
            out[prefix + k] = v
    return out


def test_sharded_vector_env_equals_a_sync_vector_env():
    """Two workers give what one SyncVectorEnv over the same envs gives, episode ends and
    autoresets included."""
    dist = metarl.envs.make("ml1/reach-v3")
    fns = protocol_env_fns(dist, protocol_settings("ml1", 1, meta_batch_size=5), max_episode_steps=4)[:3]
    same_step = gym.vector.AutoresetMode.SAME_STEP  # Meta-World's, and ShardedVectorEnv's default
    sync = gym.vector.SyncVectorEnv(fns, autoreset_mode=same_step)
    sharded = ShardedVectorEnv(fns, num_workers=2, autoreset_mode=same_step)
    try:
        assert sharded.get_attr("task_name") == sync.get_attr("task_name")
        for envs in (sync, sharded):
            envs.call("toggle_sample_tasks_on_reset", False)
        a, b = sync.call("sample_tasks"), sharded.call("sample_tasks")
        np.testing.assert_array_equal(np.stack([o for o, _ in a]), np.stack([o for o, _ in b]))
        obs_a, _ = sync.reset()
        obs_b, _ = sharded.reset()
        np.testing.assert_array_equal(obs_a, obs_b)
        rng = np.random.default_rng(0)
        ends = 0
        for _ in range(9):
            action = rng.uniform(-1, 1, size=(3, 4))
            out_a, out_b = sync.step(action), sharded.step(action)
            for x, y in zip(out_a[:4], out_b[:4], strict=True):
                np.testing.assert_array_equal(x, y)
            info_a, info_b = _flat_info(out_a[4]), _flat_info(out_b[4])
            assert info_a.keys() == info_b.keys()
            for k in info_a:
                if info_a[k].dtype == object:  # final_obs: one array per env that ended
                    for x, y in zip(info_a[k], info_b[k], strict=True):
                        np.testing.assert_array_equal(x, y, err_msg=k)
                else:
                    np.testing.assert_array_equal(info_a[k], info_b[k], err_msg=k)
            ends += int(out_a[3].sum())
        assert ends == 6  # each env truncated twice, at steps 4 and 8
    finally:
        sync.close()
        sharded.close()


def test_a_recurrent_agent_reads_each_evaluation_steps_reward():
    """RL² and VariBAD take the previous reward as an input at every step. Meta-World's
    ``evaluation`` shows its agent only observations, so the agent reads the rewards from
    the vector env: after each evaluation step, across episode ends, the policy's reward
    input is the reward that step returned (it stayed at the last adaptation reward)."""
    dist = metarl.envs.make("ml1/reach-v3")
    settings = protocol_settings("ml1", 1, meta_batch_size=2)
    envs = ShardedVectorEnv(protocol_env_fns(dist, settings, max_episode_steps=4), num_workers=1)
    torch.manual_seed(0)
    policy = RecurrentGaussianPolicy(39, 4, gru_size=8, encoder_sizes=[8])
    agent = LearnerAgent(Rl2Learner(Rl2Config(gru_size=8), policy), envs, 1)
    try:
        envs.call("toggle_sample_tasks_on_reset", False)
        envs.call("sample_tasks")
        obs, _ = envs.reset()
        ends, rewards = 0, None
        for _ in range(7):
            actions = agent.eval_action(obs)
            if rewards is not None:
                assert torch.equal(agent.actor.state["prev_reward"], torch.from_numpy(rewards.astype(np.float32)))
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            assert np.abs(rewards).min() > 0
            agent.reset(terminated | truncated)
            ends += int((terminated | truncated).sum())
        assert ends == 2  # both envs started a second episode on the reward input of their first
    finally:
        envs.close()


@pytest.mark.parametrize("start", ["continued", "adapted"])
def test_evaluation_episodes_start_where_the_setting_says(start):
    """``adapted`` (the default; garage's and metaworld-algorithms' RL² agents): every
    evaluation episode starts from the state the adaptation left, so its first action is the
    one the adapted state gives its first observation; ``continued`` goes on from the
    previous episode's end, and that action differs."""
    from metaworld.evaluation import Timestep

    dist = metarl.envs.make("ml1/reach-v3")
    settings = protocol_settings("ml1", 1, meta_batch_size=2, evaluation_start=start)
    assert settings["evaluation_start"] == start
    envs = ShardedVectorEnv(protocol_env_fns(dist, settings, max_episode_steps=4), num_workers=1)
    torch.manual_seed(0)
    policy = RecurrentGaussianPolicy(39, 4, gru_size=8, encoder_sizes=[8])
    agent = LearnerAgent(Rl2Learner(Rl2Config(gru_size=8), policy), envs, 1, evaluation_start=start)
    try:
        envs.call("toggle_sample_tasks_on_reset", False)
        envs.call("sample_tasks")
        agent.init()
        obs, _ = envs.reset()
        for _ in range(4):  # one 4-step adaptation episode per env
            actions, aux = agent.adapt_action(obs)
            next_obs, rewards, terminated, truncated, _ = envs.step(actions)
            agent.step(Timestep(obs, actions, rewards, terminated, truncated, aux))
            obs = next_obs
        agent.adapt()
        adapted = agent.actor.carry()
        obs, _ = envs.reset()
        agent.reset(np.ones(2, bool))
        firsts, expected = [], []
        for t in range(12):  # three 4-step evaluation episodes per env
            if t % 4 == 0:
                with torch.no_grad():
                    x = policy.inputs(torch.as_tensor(obs, dtype=torch.float32), adapted["prev_action"],
                                      adapted["prev_reward"], torch.ones(2), policy.reward_scale)
                    expected.append(policy.step(x, adapted["h"])[0])
            actions = agent.eval_action(obs)
            if t % 4 == 0:
                firsts.append(agent.pending)
            obs, rewards, terminated, truncated, _ = envs.step(actions)
            assert (terminated | truncated).all() == (t % 4 == 3)
            agent.reset(terminated | truncated)
        if start == "adapted":  # one lane's episode ends (as on success) while the other's goes on
            agent.eval_action(obs)
            obs, *_ = envs.step(agent._env_actions(agent.pending))
            before, pending = agent.actor.carry(), agent.pending.clone()
            last_reward = torch.as_tensor(envs.last_rewards, dtype=torch.float32)
            agent.reset(np.array([True, False]))
            agent.eval_action(obs)
            with torch.no_grad():
                x = policy.inputs(torch.as_tensor(obs, dtype=torch.float32),
                                  torch.stack([adapted["prev_action"][0], pending[1]]),
                                  torch.stack([adapted["prev_reward"][0], last_reward[1]]),
                                  torch.tensor([1.0, 0.0]), policy.reward_scale)
                mixed = policy.step(x, torch.stack([adapted["h"][0], before["h"][1]]))[0]
            assert torch.equal(agent.pending, mixed)
    finally:
        envs.close()
    assert torch.equal(firsts[0], expected[0])  # the first evaluation episode starts adapted either way
    later = [torch.equal(f, e) for f, e in zip(firsts[1:], expected[1:], strict=True)]
    assert later == ([True, True] if start == "adapted" else [False, False])


def test_adaptation_batches_end_each_episode_at_its_final_observation():
    """The learner's batch holds each adaptation episode's final observation as its
    ``last_obs`` (PEARL's context can use it as the last transition's next state); the
    vector env returns the next episode's first observation in its place."""
    from metaworld.evaluation import Timestep

    class Capturing(Rl2Learner):
        def adapt(self, state, batch):
            self.batch = batch
            return super().adapt(state, batch)

    dist = metarl.envs.make("ml1/reach-v3")
    envs = ShardedVectorEnv(protocol_env_fns(dist, protocol_settings("ml1", 1, meta_batch_size=2),
                                             max_episode_steps=4), num_workers=1)
    torch.manual_seed(0)
    learner = Capturing(Rl2Config(gru_size=8), RecurrentGaussianPolicy(39, 4, gru_size=8, encoder_sizes=[8]))
    agent = LearnerAgent(learner, envs, episodes=2)
    try:
        envs.call("toggle_sample_tasks_on_reset", False)
        envs.call("sample_tasks")
        agent.init()
        obs, _ = envs.reset()
        finals: list[list[np.ndarray]] = [[], []]
        for _ in range(8):  # two 4-step episodes per env
            actions, aux = agent.adapt_action(obs)
            next_obs, rewards, terminated, truncated, info = envs.step(actions)
            for i in np.flatnonzero(terminated | truncated):
                finals[i].append(info["final_obs"][i])
                assert not np.array_equal(info["final_obs"][i], next_obs[i])  # the next episode's first
            agent.step(Timestep(obs, actions, rewards, terminated, truncated, aux))
            obs = next_obs
        agent.adapt()
    finally:
        envs.close()
    assert [len(f) for f in finals] == [2, 2]
    expected = torch.from_numpy(np.array(finals, dtype=np.float32))
    assert learner.batch.last_obs.shape == (2, 2, 39) and torch.equal(learner.batch.last_obs, expected)
