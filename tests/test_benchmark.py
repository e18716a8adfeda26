"""`metarl benchmark`: budgets, skip finished runs, resume unfinished ones, the table."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from metarl.benchmark import SUITE_DIR, load_suite, plot_suite, run_suite
from metarl.config import ConfigError, load_config
from metarl.rundir import RunDir
from metarl.trainer import Trainer, load_run

# 2 tasks x 2 episodes x 10 steps, before and after adaptation: 80 env steps per iteration.
SUITE = """
name: tiny
overrides: [sampler.backend=local, logger.wandb=false, "policy.hidden_sizes=[8]", meta_batch_size=2,
            episodes_per_task=2, max_episode_steps=10, eval.num_tasks=2, eval.adapt_steps=1,
            checkpoint_every=1]
runs:
  - name: nav-maml
    config: maml_trpo/nav2d
    env_steps: 200
    seeds: [0, 1]
  - name: reach-maml
    config: maml_trpo/ml1_reach
    env_steps: 80
  - name: nav-rl2
    config: rl2_ppo/nav2d
    env_steps: 80
    overrides: [algo.gru_size=8]
"""


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_time_s"} for r in rows]


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(SUITE)
    return load_suite(str(path))


def test_suite_trains_to_budget_evaluates_and_skips_finished_runs(suite, tmp_path, capsys):
    results = tmp_path / "results"
    summary = run_suite(suite, results)
    nav = summary["runs"]["nav-maml"]
    assert nav["finished_seeds"] == 2
    # the budget, not iterations, ends a run: 200 steps is 3 iterations of 80
    assert [r["env_steps"] for r in metrics(results / "nav-maml-s0")] == [80, 160, 240]
    assert metrics(results / "nav-maml-s0") != metrics(results / "nav-maml-s1")
    reach = results / "reach-maml-s0"
    protocol = json.loads((reach / "eval.json").read_text())["metaworld_protocol"]
    assert protocol["settings"]["meta_batch_size"] == 10  # Meta-World+'s ML1 setting
    assert summary["runs"]["reach-maml"]["aggregate"]["protocol_success"]["n"] == 1
    # weights only: no optimiser state, no iteration files
    state = torch.load(RunDir(reach).latest_checkpoint, weights_only=True)
    assert state["learner"]["optimizer"] is None and not list((reach / "checkpoints").glob("iter_*"))
    # an Adam learner's moments, beside the checkpoint while it trains, go too
    rl2 = RunDir(results / "nav-rl2-s0")
    assert "extra_state" not in torch.load(rl2.latest_checkpoint, weights_only=True)
    assert not list(rl2.extra_state.glob("*.pt")) and not list(rl2.checkpoints.glob("iter_*"))
    table = (results / "README.md").read_text()
    assert "| tiny | nav-maml | `maml_trpo/nav2d` | 240 (200) | 2/2 |" in table
    assert (results / "tiny.png").stat().st_size > 0 and (results / "tiny.json").is_file()
    # held-out return before -> after adaptation: mean and std over the seeds' eval.json
    adaptation = [json.loads((results / f"nav-maml-s{s}" / "eval.json").read_text())["adaptation"] for s in (0, 1)]
    pre, post = ([a[k]["return_mean"] for a in adaptation] for k in (0, -1))
    row = next(line for line in table.splitlines() if "| nav-maml |" in line)
    assert f"| {np.mean(pre):.1f} ± {np.std(pre):.1f} → {np.mean(post):.1f} ± {np.std(post):.1f} |" in row
    # nav2d has no success measure: its curve is the return
    nav = dataclasses.replace(suite, runs=suite.runs[:1])
    (results / "tiny.png").unlink()
    assert plot_suite(nav, results) is None and not (results / "tiny.png").exists()
    assert plot_suite(dataclasses.replace(nav, curve="return"), results) == results / "tiny.png"
    assert (results / "tiny.png").stat().st_size > 10_000

    # The committed checkpoint re-evaluates to the table's number.
    from metarl.benchmark import evaluate_protocol

    cfg, trainer = load_run(reach)
    again = evaluate_protocol(trainer, cfg)
    # The return too: after 10-step episodes the success rate alone is likely 0 either way.
    assert {k: again[k] for k in ("success_rate", "return", "per_task_success")} == \
        {k: protocol[k] for k in ("success_rate", "return", "per_task_success")}

    before = {p: p.stat().st_mtime_ns for p in results.rglob("metrics.jsonl")}
    capsys.readouterr()
    run_suite(suite, results, seed_major=True)
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 4
    # seed-major order: every run's first seed, then the second seeds
    assert [line.split(":")[0] for line in out.splitlines() if "skipped" in line] == \
        ["[1/4] nav-maml seed 0", "[2/4] reach-maml seed 0", "[3/4] nav-rl2 seed 0", "[4/4] nav-maml seed 1"]
    assert before == {p: p.stat().st_mtime_ns for p in results.rglob("metrics.jsonl")}

    # The table holds the protocol with the default evaluation start. A row re-evaluated with the
    # other one, or a learner adapting by episodes (RL², VariBAD) evaluated before the start was
    # recorded (when its evaluation episodes continued), is left out with a line; MAML's family
    # carries no state into them, so its unrecorded numbers hold. The row's file is edited to
    # stand for each case.
    from metarl.benchmark import write_summary

    ev = json.loads((reach / "eval.json").read_text())
    assert ev["metaworld_protocol"]["settings"]["evaluation_start"] == "adapted"
    for unit, start, kept in [("gradient_steps", "continued", False), ("gradient_steps", None, True),
                              ("episodes", "continued", False), ("episodes", None, False),
                              ("episodes", "adapted", True)]:
        edited = json.loads(json.dumps(ev))
        edited["unit"] = unit
        if start is None:
            del edited["metaworld_protocol"]["settings"]["evaluation_start"]
        else:
            edited["metaworld_protocol"]["settings"]["evaluation_start"] = start
        (reach / "eval.json").write_text(json.dumps(edited))
        capsys.readouterr()
        aggregate = write_summary(suite, results)["runs"]["reach-maml"]["aggregate"]["protocol_success"]
        err = capsys.readouterr().err
        assert (aggregate is not None) == kept, (unit, start)
        left_out = "evaluation_start=continued, not the default 'adapted': left out of the table"
        assert (left_out in err) == (not kept), err


def test_suite_resumes_an_interrupted_run_exactly(suite, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_suite(suite, full, only=["nav-maml"])
    # An interrupted run: one iteration trained with the suite's settings, then stopped.
    run = suite.runs[0]
    cfg = load_config(run.config, [*suite.overrides, "seed=0", f"run_dir={cut / 'nav-maml-s0'}",
                                   "iterations=1"])
    Trainer(cfg).run()
    # A row edited since the run started does not resume it under the new settings.
    edited = dataclasses.replace(suite, overrides=[*suite.overrides, "algo.inner_lr=0.3"])
    with pytest.raises(ConfigError, match=r"nav-maml-s0 was started with other settings than the suite now "
                                          r"gives it \(algo.inner_lr: 0.1 -> 0.3\)"):
        run_suite(edited, cut, only=["nav-maml"])
    run_suite(suite, cut, only=["nav-maml"])
    assert metrics(cut / "nav-maml-s0") == metrics(full / "nav-maml-s0")
    marker = json.loads((cut / "nav-maml-s0" / "benchmark.json").read_text())
    assert marker["finished"] and marker["env_steps"] == 240


def test_bad_suites_are_one_line_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nruns:\n  - name: a\n    config: maml_trpo/nav2d\n    budget: 10\n")
    with pytest.raises(ConfigError, match="unknown key 'budget'; valid: name, config, env_steps"):
        load_suite(str(path))
    with pytest.raises(ConfigError, match="unknown benchmark suite 'nope'.*valid names: .*metaworld_ml1"):
        load_suite("nope")
    path.write_text(SUITE + "curve: regret\n")
    with pytest.raises(ConfigError, match="curve must be one of success, return, got 'regret'"):
        load_suite(str(path))
    path.write_text(SUITE)
    with pytest.raises(ConfigError, match="unknown run 'x' in suite tiny; valid: nav-maml, reach-maml, nav-rl2"):
        run_suite(load_suite(str(path)), tmp_path / "r", only=["x"])
    for value, message in [("0", "seeds must be a non-empty list of whole numbers, got 0"),
                           ("[]", "seeds must be a non-empty list of whole numbers, got []"),
                           ("[0, x]", "seeds must be a non-empty list of whole numbers, got [0, 'x']")]:
        path.write_text(f"name: bad\nruns:\n  - {{name: a, config: maml_trpo/nav2d, env_steps: 10, seeds: {value}}}\n")
        with pytest.raises(ConfigError, match=re.escape(f"runs[0]: {message}")):
            load_suite(str(path))
    path.write_text("name: bad\nruns:\n  - {name: a, config: maml_trpo/nav2d, env_steps: 1e6}\n")
    with pytest.raises(ConfigError, match=re.escape("runs[0]: env_steps must be a whole number >= 1, got '1e6'")):
        load_suite(str(path))
    # A typo in the last row stops the suite before the first row trains, naming the row.
    path.write_text(SUITE.replace("[algo.gru_size=8]", "[algo.gru_sise=8]"))
    with pytest.raises(ConfigError, match="suite tiny, run nav-rl2: unknown config key 'algo.gru_sise'"):
        run_suite(load_suite(str(path)), tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_overrides_may_follow_flags(capsys):
    from metarl.cli import main

    assert main(["benchmark", "nope", "--seed-major", "logger.wandb=false"]) == 2
    assert "unknown benchmark suite 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", "nope", "--seed-major", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(p.stem for p in SUITE_DIR.glob("*.yaml")))
def test_every_shipped_suite_resolves_to_valid_run_configs(name):
    """A typo in a suite file (an unknown key, config or override) would otherwise surface
    hours into a multi-session benchmark, when the runner reaches that row."""
    suite = load_suite(name)
    assert suite.name == name
    for run in suite.runs:
        cfg = load_config(run.config, [*suite.overrides, *run.overrides, "seed=0"])
        assert cfg.algo.name in run.name and run.env_steps > 0
