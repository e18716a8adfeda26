import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import metarl.envs
from metarl.envs import Task
from metarl.envs.metaworld import split_classes

FAMILIES = ["nav2d", "halfcheetah-vel", "halfcheetah-dir", "ant-dir", "ant-goal", "car-goal",
            "car-speed", "highway-parking", "ml1/pick-place-v3"]


def test_names_cover_every_family():
    names = metarl.envs.names()
    for family in FAMILIES + ["ml10", "ml25", "ml45", "ml1/reach-v3"]:
        assert family in names
    assert sum(n.startswith("ml1/") for n in names) == 50


@pytest.mark.parametrize("name", FAMILIES)
def test_splits_disjoint_and_deterministic(name):
    dist = metarl.envs.make(name)
    a = dist.sample(5, "train", np.random.default_rng(1))
    b = metarl.envs.make(name).sample(5, "train", np.random.default_rng(1))
    assert a == b
    train = {json.dumps(t.params, sort_keys=True) for t in dist.tasks("train")}
    test = {json.dumps(t.params, sort_keys=True) for t in dist.tasks("test")}
    assert len(train) == dist.split_size("train") and len(test) == dist.split_size("test")
    if name == "halfcheetah-dir":  # two tasks only; the papers test on the same two
        assert train == test
    else:
        assert not train & test
    # tasks are plain data
    t = a[0]
    assert Task.from_json(json.loads(json.dumps(t.to_json()))) == t


@pytest.mark.parametrize("name", FAMILIES)
def test_env_passes_check_env_and_rolls_one_episode(name):
    dist = metarl.envs.make(name)
    task = dist.sample(1, "test", np.random.default_rng(0))[0]
    env = dist.make_env(task)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs.astype(env.observation_space.dtype))
    env.action_space.seed(0)
    steps, done = 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert np.isfinite(reward)
        steps += 1
        done = terminated or truncated
    assert steps <= dist.horizon
    if name.startswith("ml1/"):
        assert "success" in info


def test_set_task_changes_reward():
    dist = metarl.envs.make("halfcheetah-vel")
    t0, t1 = dist.tasks("train")[:2]
    env = dist.make_env(t0)
    env.reset(seed=0)
    r0 = env.step(np.zeros(6))[1]
    dist.set_task(env, t1)
    env.reset(seed=0)
    r1 = env.step(np.zeros(6))[1]
    assert r0 != r1


@pytest.mark.parametrize("unit_actions, scale", [(True, 0.1), (False, 1.0)])
def test_nav2d_matches_paper_dynamics(unit_actions, scale):
    """Actions in [-1, 1] move the point by a tenth of them (MAML's rllab normalize, VariBAD's
    point robot); ``unit_actions=false`` takes displacements, as runs before it did."""
    dist = metarl.envs.make("nav2d", unit_actions=unit_actions)
    env = dist.make_env(Task("nav2d", {"goal": [0.3, -0.2]}))
    assert env.action_space.high.tolist() == pytest.approx([0.1 / scale] * 2)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0, 0])
    obs, r, term, trunc, _ = env.step(np.array([5.0, -0.5]) / scale * 0.1)  # the first clipped to the bound
    np.testing.assert_allclose(obs, [0.1, -0.05], atol=1e-7)
    assert r == pytest.approx(-np.hypot(0.2, 0.15))
    assert not term
    for _ in range(2):
        obs, r, term, _, _ = env.step(np.array([0.1, -0.075]) / scale)
    assert term  # within 0.01 of the goal


def test_ant_goal_takes_oysters_costs_and_never_ends_early():
    """-|xy - goal|_1 - 0.1 |a|^2 - 5e-4 |clip(cfrc_ext)|^2, no healthy term, no termination
    (oyster's, VariBAD's and ProMP's ant_goal.py), recomputed from the simulator; the ant
    observes its position and contact forces."""
    dist = metarl.envs.make("ant-goal")
    task = dist.sample(1, "train", np.random.default_rng(0))[0]
    env = dist.make_env(task)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (15 + 14 + 13 * 6,)
    sim, (gx, gy) = env.unwrapped, task.params["goal"]
    rng, unhealthy = np.random.default_rng(1), 0
    for _ in range(200):  # random flailing leaves gymnasium's healthy range: no episode end
        action = rng.uniform(-1, 1, size=8)
        obs, reward, terminated, truncated, _ = env.step(action)
        x, y = sim.data.qpos[:2]
        contact = np.square(np.clip(sim.data.cfrc_ext[1:], -1, 1)).sum()
        assert reward == pytest.approx(-(abs(x - gx) + abs(y - gy)) - 0.1 * np.square(action).sum()
                                       - 5e-4 * contact, abs=1e-12)
        assert not terminated
        unhealthy += not sim.is_healthy
    assert truncated and unhealthy > 0  # the horizon, 200


def test_ant_dir_forward_backward_is_two_headings():
    dist = metarl.envs.make("ant-dir", forward_backward=True)
    for split in ("train", "test"):
        assert sorted(t.params["angle"] for t in dist.tasks(split)) == [0.0, pytest.approx(np.pi)]
    with pytest.raises(ValueError, match="forward_backward is an ant-dir option, not ant-goal's"):
        metarl.envs.make("ant-goal", forward_backward=True)


def test_halfcheetah_vel_max_velocity_sets_the_range():
    """MAML's U[0, 2] by default, the same draws as before the option; oyster's U[0, 3] with it."""
    maml, oyster = metarl.envs.make("halfcheetah-vel"), metarl.envs.make("halfcheetah-vel", max_velocity=3.0)
    for split in ("train", "test"):
        two = np.array([t.params["velocity"] for t in maml.tasks(split)])
        three = np.array([t.params["velocity"] for t in oyster.tasks(split)])
        assert two.min() >= 0 and two.max() < 2 and three.max() < 3
        assert three.max() > 2.5  # 100 train and 30 test draws: some lie above MAML's range
        np.testing.assert_allclose(three, 1.5 * two, rtol=1e-12)  # the same uniform draws, scaled
    with pytest.raises(ValueError, match="max_velocity is a halfcheetah-vel option, not ant-dir's"):
        metarl.envs.make("ant-dir", max_velocity=3.0)
    with pytest.raises(ValueError, match="max_velocity must be > 0"):
        metarl.envs.make("halfcheetah-vel", max_velocity=0)


def test_car_task_parameters_reach_physics():
    dist = metarl.envs.make("car-speed")
    slow, fast = (Task("car-speed", {"friction": f, "mass": m, "speed": 1.0}) for f, m in ((0.1, 2.0), (1.0, 0.5)))
    speeds = []
    for task in (slow, fast):
        env = dist.make_env(task)
        env.reset(seed=0)
        for _ in range(10):
            obs, *_ = env.step(np.array([1.0, 0.0]))
        speeds.append(obs[4])
    assert speeds[1] > speeds[0] + 0.05  # light car on a grippy road accelerates faster


def test_metaworld_benchmark_classes_are_the_benchmarks_own():
    from metaworld import env_dict

    for name, table in (("ml10", env_dict.ML10_V3), ("ml45", env_dict.ML45_V3), ("ml25", env_dict.ML25_V3)):
        classes = split_classes(name)
        assert classes["train"] == list(table["train"]) and classes["test"] == list(table["test"])
        # metaworld 3.1.1's own ML25 lists basketball-v3 in both splits; we keep its split.
        overlap = {"ml25": {"basketball-v3"}}.get(name, set())
        assert set(classes["train"]) & set(classes["test"]) == overlap
        dist = metarl.envs.make(name)
        assert dist.split_size("train") == 50 * len(table["train"])
        assert dist.split_size("test") == 50 * len(table["test"])


@pytest.mark.parametrize("benchmark", ["ml10", pytest.param("ml25", marks=pytest.mark.slow),
                                       pytest.param("ml45", marks=pytest.mark.slow)])
def test_ml_tasks_use_exactly_the_benchmark_split(benchmark):
    import metaworld

    from metarl.envs.metaworld import metaworld_task

    dist = metarl.envs.make(benchmark, seed=3)
    bench = getattr(metaworld, benchmark.upper())(seed=3)
    for split, mw_tasks in (("train", bench.train_tasks), ("test", bench.test_tasks)):
        ours = dist.tasks(split)
        assert [t.params["env_name"] for t in ours] == [t.env_name for t in mw_tasks]
        # back to Meta-World's own tasks byte for byte (set_task and the protocol's envs use these)
        assert [metaworld_task(t).data for t in ours] == [t.data for t in mw_tasks]
    assert {t.params["env_name"] for t in dist.tasks("test")} == set(bench.test_classes)


def test_ml_benchmarks_deal_their_tasks_evenly_over_classes_as_metaworlds_envs():
    """Meta-World's ML vector envs bind each env to one class (meta-batch a multiple of the
    class count): ML10's 20 training tasks are 2 goals of each of its 10 classes."""
    from collections import Counter

    from metarl.envs.core import TaskDistribution

    dist = metarl.envs.make("ml10")
    train = dist.classes("train")
    for seed in range(3):
        tasks = dist.sample(20, "train", np.random.default_rng(seed))
        assert [t.params["env_name"] for t in tasks] == [c for c in train for _ in range(2)]
        assert len({t.index for t in tasks}) == 20 and all(t.split == "train" for t in tasks)
    assert dist.sample(20, "train", np.random.default_rng(0)) != dist.sample(20, "train", np.random.default_rng(1))
    counts = Counter(t.params["env_name"] for t in dist.sample(23, "train", np.random.default_rng(0)))
    assert set(counts) == set(train) and sorted(counts.values()) == [2] * 7 + [3] * 3
    test = dist.sample(3, "test", np.random.default_rng(0))  # fewer tasks than classes: 3 distinct ones
    assert len({t.params["env_name"] for t in test}) == 3 and {t.split for t in test} == {"test"}
    many = dist.sample(120, "test", np.random.default_rng(0))  # 24 of each test class's 50 goals, none twice
    assert Counter(t.params["env_name"] for t in many) == {c: 24 for c in dist.classes("test")}
    assert len({t.index for t in many}) == 120
    beyond = dist.sample(260, "test", np.random.default_rng(0))  # 52 a class: with replacement
    assert Counter(t.params["env_name"] for t in beyond) == {c: 52 for c in dist.classes("test")}
    # one task at a time (SB3's envs) reaches every class
    assert {dist.sample(1, "train", np.random.default_rng(s))[0].params["env_name"] for s in range(100)} == set(train)
    with pytest.raises(ValueError, match="positive integer"):
        dist.sample(0)
    with pytest.raises(ValueError, match="balanced must be true or false, got 'no'"):
        metarl.envs.make("ml10", balanced="no")
    # balanced=false: the uniform draw over all 500 goals that runs saved before the option made
    uniform = metarl.envs.make("ml10", balanced=False)
    drawn = uniform.sample(20, "train", np.random.default_rng(0))
    assert drawn == TaskDistribution.sample(uniform, 20, "train", np.random.default_rng(0))
    assert sorted(Counter(t.params["env_name"] for t in drawn).values()) != [2] * 10
    # ML1 has one class: the option changes nothing
    ml1 = metarl.envs.make("ml1/reach-v3")
    assert ml1.sample(10, "train", np.random.default_rng(4)) == TaskDistribution.sample(
        ml1, 10, "train", np.random.default_rng(4))


def test_ml_runs_saved_before_balanced_sampling_keep_the_uniform_draw():
    from metarl.config import load_config, saved_with_versioned_options, with_versioned_options

    cfg = load_config("rl2_ppo/ml10", [])
    assert with_versioned_options(cfg).tasks.options["balanced"] is True  # a new run records it
    saved = {"tasks": {"name": "ml10", "options": {"reward_function_version": "v2"}}}
    old = saved_with_versioned_options(saved)
    assert old["tasks"]["options"] == {"balanced": False, "reward_function_version": "v2"}
    assert with_versioned_options(cfg, old).tasks.options["balanced"] is False
    assert saved_with_versioned_options({"tasks": {"name": "ml1/reach-v3", "options": {}}})["tasks"]["options"] == {}


def test_metaworld_pools_are_built_once_per_process_and_each_distribution_has_its_own_lists(monkeypatch):
    import metaworld

    from metarl.envs.metaworld import _benchmark_pools

    built, real = [], metaworld.ML1
    monkeypatch.setattr(metaworld, "ML1", lambda *args, **kwargs: built.append((args, kwargs)) or real(*args, **kwargs))
    _benchmark_pools.cache_clear()
    a, b = metarl.envs.make("ml1/reach-v3", seed=5), metarl.envs.make("ml1/reach-v3", seed=5)
    assert a.tasks("test") == b.tasks("test") and a.tasks("test") is not b.tasks("test")
    other = metarl.envs.make("ml1/reach-v3", seed=6)
    assert other.tasks("test") != a.tasks("test")
    assert built == [(("reach-v3",), {"seed": 5}), (("reach-v3",), {"seed": 6})]
    a.tasks("test").clear()
    assert len(b.tasks("test")) == 50 == len(metarl.envs.make("ml1/reach-v3", seed=5).tasks("test"))


def test_metaworld_goal_is_hidden_and_set_from_plain_params():
    dist = metarl.envs.make("ml1/reach-v3")
    t0, t1 = dist.tasks("test")[:2]
    env = dist.make_env(t0)
    obs0, _ = env.reset(seed=0)
    assert np.all(obs0[-3:] == 0)  # partially observable: goal zeroed
    dist.set_task(env, t1)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.unwrapped._target_pos, np.array(t1.params["rand_vec"])[-3:])


def test_unknown_names_and_options_are_clear():
    with pytest.raises(ValueError, match="unknown task distribution 'nav3d'; valid: nav2d"):
        metarl.envs.make("nav3d")
    with pytest.raises(ValueError, match="unknown Meta-World ML1 environment 'pick-v3'; valid: .*pick-place-v3"):
        metarl.envs.make("ml1/pick-v3")
    with pytest.raises(ValueError, match="invalid option for task distribution 'nav2d'"):
        metarl.envs.make("nav2d", bogus=1)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        metarl.envs.make("nav2d").sample(1, "val")


def test_gym_env_types():
    env = metarl.envs.make("nav2d").make_env(Task("nav2d", {"goal": [0.1, 0.1]}))
    assert isinstance(env, gym.Env)
