"""SB3 baselines: the adapter env, a tiny multi-task run, fine-tuning and scratch curves."""

import json

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_checker import check_env

import metarl.envs
from metarl.algos.sb3 import TaskEnv
from metarl.config import ConfigError, load_config
from metarl.trainer import build

SMALL = ["algo.steps_per_iteration=256", "algo.n_steps=32", "algo.n_envs=2", "iterations=2",
         "episodes_per_task=2", "max_episode_steps=20", "eval.num_tasks=2", "eval.adapt_steps=1",
         "logger.wandb=false"]


def test_task_env_passes_sb3_check_env_and_draws_tasks():
    dist = metarl.envs.make("nav2d")
    env = TaskEnv(dist, "train", seed=0)
    check_env(env)
    goals = set()
    for seed in range(5):
        env.reset(seed=seed)
        goals.add(tuple(env._env.unwrapped.goal))
    assert len(goals) == 5  # a task per episode
    fixed = TaskEnv(dist, "test", task=dist.tasks("test")[0])
    fixed.reset(seed=0)
    np.testing.assert_array_equal(fixed._env.unwrapped.goal, dist.tasks("test")[0].params["goal"])


def test_task_env_truncates_at_the_runs_horizon():
    """As metarl's sampler, at ``max_episode_steps`` (nav2d's own limit is 100)."""
    env = TaskEnv(metarl.envs.make("nav2d"), "train", seed=0, max_steps=7)
    env.reset(seed=0)
    steps = [env.step(np.zeros(2, np.float32)) for _ in range(7)]
    assert [s[3] for s in steps] == [False] * 6 + [True] and not any(s[2] for s in steps)
    assert "episode_success" in steps[-1][4]


def test_sac_fine_tuning_keeps_the_temperature_updates_at_once_and_leaves_trainings_random_stream():
    cfg = load_config("sb3_multitask/nav2d", ["algo.sb3_algo=sac", "algo.n_envs=1", "algo.n_steps=32",
                                              "max_episode_steps=20", "episodes_per_task=1"])
    _, learner = build(cfg)
    learner.model.learn(200)  # 168 updates after 32 random steps: the temperature moves from 1
    assert learner.model._n_updates == 168 and float(learner.model.log_ent_coef.detach()) < -0.01
    tasks = learner.dist.sample(2, "test", np.random.default_rng(0))

    def evaluate():
        state = learner.init_adaptation(tasks, seed=7)
        for model in learner._fine_tuners(state):  # copies of the trained model, temperature included
            torch.testing.assert_close(model.log_ent_coef.detach(), learner.model.log_ent_coef.detach())
        learner.adapt(state, None)
        return state

    torch.manual_seed(1)
    np.random.seed(1)
    state = evaluate()
    after = torch.rand(3), np.random.rand(3)  # training's draws, as if nothing had run
    torch.manual_seed(1)
    np.random.seed(1)
    torch.testing.assert_close(after[0], torch.rand(3))
    np.testing.assert_array_equal(after[1], np.random.rand(3))
    assert [m._n_updates for m in state.models] == [20, 20]  # one per transition of its 20-step episode
    # Each task's fine-tuning has its own seed, and the same evaluation gives the same models.
    first = [m.policy.actor.mu.weight.detach().clone() for m in state.models]
    assert not torch.equal(*first)
    again = evaluate()
    for a, m in zip(first, again.models, strict=True):
        assert torch.equal(a, m.policy.actor.mu.weight)


def test_sb3_multitask_finetune_scratch_and_plot(cli, tmp_path):
    mt = tmp_path / "mt"
    result = cli(["train", "sb3_multitask/nav2d", *SMALL, f"run_dir={mt}"])
    assert result.code == 0, result.stderr
    rows = [json.loads(line) for line in (mt / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1] and rows[1]["env_steps"] > rows[0]["env_steps"] >= 256
    ev = json.loads((mt / "eval.json").read_text())
    assert ev["unit"] == "episodes" and [r["k"] for r in ev["adaptation"]] == [0, 2]
    assert ev["deterministic"] is True  # SB3's evaluate_policy convention
    snapshot = (mt / "metrics.jsonl").read_text()
    resumed = cli(["train", "sb3_multitask/nav2d", *SMALL, "iterations=3", "resume=true", f"run_dir={mt}"])
    assert resumed.code == 2 and "sb3_multitask runs cannot resume" in resumed.stderr, resumed.stderr
    assert (mt / "metrics.jsonl").read_text() == snapshot

    ft = cli(["train", "sb3_finetune/nav2d", *SMALL, f"algo.init_from={mt}", f"run_dir={tmp_path / 'ft'}"])
    assert ft.code == 0, ft.stderr
    sc = cli(["train", "sb3_scratch/nav2d", *SMALL, f"run_dir={tmp_path / 'sc'}"])
    assert sc.code == 0, sc.stderr
    for run in ("ft", "sc"):
        ev = json.loads((tmp_path / run / "eval.json").read_text())
        assert [r["k"] for r in ev["adaptation"]] == [0, 2] and len(ev["per_task"]) == 2
    missing = cli(["train", "sb3_finetune/nav2d", *SMALL, f"run_dir={tmp_path / 'x'}"])
    assert missing.code == 2 and "needs algo.init_from" in missing.stderr
    other = cli(["train", "sb3_finetune/nav2d", *SMALL, "algo.sb3_algo=sac", f"algo.init_from={mt}",
                 f"run_dir={tmp_path / 'y'}"])
    assert other.code == 2 and f"algo.init_from={mt} trained ppo on nav2d; this run fine-tunes sac on nav2d" \
        in other.stderr, other.stderr

    maml = tmp_path / "maml"
    assert cli(["train", "maml_trpo/nav2d", "iterations=1", "meta_batch_size=2", "episodes_per_task=2",
                "max_episode_steps=20", "eval.num_tasks=2", "eval.adapt_steps=1", "sampler.backend=local",
                "logger.wandb=false", f"run_dir={maml}"]).code == 0
    out = tmp_path / "both.png"
    plot = cli(["plot", str(maml), str(mt), "--out", str(out)])
    assert plot.code == 0, plot.stderr
    assert out.stat().st_size > 10_000


def test_metaworlds_protocol_refuses_a_learner_that_adapts_on_its_own_episodes():
    """The protocol hands the learner the episodes to adapt on; SB3 fine-tunes on its own."""
    from metarl.metaworld_protocol import protocol_settings, run_protocol

    cfg = load_config("sb3_multitask/ml1_pick_place", ["algo.steps_per_iteration=64", "algo.n_steps=32",
                                                       "algo.n_envs=1"])
    dist, learner = build(cfg)
    with pytest.raises(ConfigError, match="Sb3Learner adapts on episodes of its own, so the protocol cannot"):
        run_protocol(learner, dist, protocol_settings("ml1", 1))
