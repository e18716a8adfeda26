import re

import pytest

from metarl.algos import MamlConfig
from metarl.config import ConfigError, load_config, resume_changes, to_dict


def test_defaults_and_overrides():
    cfg = load_config("maml_trpo/nav2d", ["algo.inner_lr=0.05", "seed=3", "policy.hidden_sizes=[8,8]"])
    assert isinstance(cfg.algo, MamlConfig)
    assert cfg.algo.inner_lr == 0.05 and cfg.seed == 3 and cfg.policy.hidden_sizes == [8, 8]
    assert cfg.tasks.name == "nav2d" and cfg.meta_batch_size == 20


@pytest.mark.parametrize("overrides, message", [
    (["algo.bogus=1"], "unknown config key 'algo.bogus'; valid keys under 'algo': name, inner_lr"),
    (["bogus=1"], "unknown config key 'bogus'; valid keys at the top level: algo"),
    (["seed=abc"], "invalid value for seed: Value 'abc' of type 'str' could not be converted to Integer"),
    (["algo.inner_lr"], "invalid override 'algo.inner_lr': expected dotted key=value"),
    (["algo.num_inner_steps=0"], "algo.num_inner_steps must be >= 1"),
    (["algo.hvp_subsample=0.4"], "algo.hvp_subsample must be 1 / k for a whole k"),
    (["algo.hvp_subsample=0"], "algo.hvp_subsample must be 1 / k for a whole k"),
    (["algo.name=maml_foo"], "unknown algo.name 'maml_foo'; valid: maml_trpo"),
    (["sampler.backend=threads"], "sampler.backend must be one of local, process, ray"),
    (["eval.num_tasks=0"], "eval.num_tasks must be >= 1, got 0"),
    (["eval.adapt_steps=-1"], "eval.adapt_steps must be >= 0, got -1"),
    (["eval.every=-5"], "eval.every must be >= 0"),
    (["logger.video_every=-1"], "logger.video_every must be >= 0"),
    (["resume=true"], "resume=true needs run_dir="),
    (["algo=maml_trpo"], "config key 'algo' is a section; give it a mapping, not 'maml_trpo' (an algorithm by "
                         "name: algo.name=maml_trpo)"),
])
def test_bad_config_input(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("maml_trpo/nav2d", overrides)


def test_unknown_config_name_lists_valid():
    with pytest.raises(ConfigError, match="unknown config 'maml_trpo/nav3d'.*valid names: .*maml_trpo/nav2d"):
        load_config("maml_trpo/nav3d")


@pytest.mark.parametrize("args, message, fresh", [
    (["train", "algo.bogus=1"], "unknown config key 'algo.bogus'", False),
    (["train", "seed=abc"], "invalid value for seed", False),
    (["train", "tasks.name=nav3d"], "unknown task distribution 'nav3d'; valid: nav2d", False),
    # in a fresh interpreter, where importing Meta-World, MuJoCo and torch could print too
    (["train", "tasks.name=ml1/pick-v3"], "unknown Meta-World ML1 environment 'pick-v3'; valid: ", True),
    (["train", "maml_trpo/nowhere"], "unknown config 'maml_trpo/nowhere'", False),
    (["train", "iterations=-1"], "iterations must be >= 1", False),
])
def test_cli_bad_input_is_one_line(cli, cli_process, tmp_path, args, message, fresh):
    result = (cli_process if fresh else cli)([*args, f"run_dir={tmp_path / 'r'}"])
    assert result.code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_bad_run_directories_are_one_line(cli, tmp_path):
    # A directory that is not a run, and a run killed before its first iteration was logged.
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text("algo: {name: maml_trpo}\ntasks: {name: nav2d}\n")
    (started / "metrics.jsonl").write_text("")
    for args, message in [
        (["evaluate", str(tmp_path)], "is not a run directory (no config.yaml)"),
        (["evaluate", str(started), "--tasks", "0"], "--tasks must be >= 1, got 0"),
        (["evaluate", str(started), "--adapt-steps", "-1"], "--adapt-steps must be >= 0, got -1"),
        (["plot", str(tmp_path), "--out", str(tmp_path / "c.png")], "is not a run directory (no config.yaml)"),
        (["plot", str(started), "--out", str(tmp_path / "c.png")], "has no iterations to plot yet"),
    ]:
        result = cli(args)
        assert result.code == 2, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
    assert not (tmp_path / "c.png").exists()


def test_cli_tasks_lists_every_family(cli):
    result = cli(["tasks"])
    assert result.code == 0, result.stderr
    for name in ["nav2d", "halfcheetah-vel", "halfcheetah-dir", "ant-dir", "ant-goal", "car-goal",
                 "car-speed", "highway-parking", "ml10", "ml25", "ml45", "ml1/pick-place-v3"]:
        assert any(line.split()[0] == name for line in result.stdout.splitlines()), name
    ml45 = next(line for line in result.stdout.splitlines() if line.startswith("ml45 "))
    assert ml45.split()[1:3] == ["2250", "250"]


def test_resume_changes_names_what_a_resume_may_not_change():
    cfg = load_config("pearl/ml1_reach")
    saved = to_dict(cfg)  # what a checkpoint holds
    allowed = ["iterations=5", "max_env_steps=100", "device=cuda", "sampler.num_workers=2", "eval.every=3",
               "logger.wandb=false", "checkpoint_every=2", "run_dir=elsewhere"]
    assert resume_changes(saved, load_config("pearl/ml1_reach", allowed)) == []
    assert resume_changes(saved, load_config("pearl/ml1_reach", [
        "seed=3", "algo.kl_weight=1.0", "tasks.options.fast=false", "policy.hidden_sizes=[300,300]"])) == [
        "algo.kl_weight: 0.1 -> 1.0",
        "tasks.options: {'reward_function_version': 'v2'} -> {'reward_function_version': 'v2', 'fast': False}",
        "policy.hidden_sizes: [300, 300, 300] -> [300, 300]", "seed: 0 -> 3"]
    # An options entry the run did not have is a change; a key the saved config lacks (older code) is not.
    assert resume_changes(saved | {"tasks": saved["tasks"] | {"options": {}}}, cfg) == [
        "tasks.options: {} -> {'reward_function_version': 'v2'}"]
    assert resume_changes({k: v for k, v in saved.items() if k != "max_episode_steps"}, cfg) == []
