import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarl.checkpoint import CheckpointError
from metarl.config import load_config
from metarl.evaluation import adaptation_curve
from metarl.rundir import RunDir
from metarl.sampling import Sampler
from metarl.trainer import Trainer, load_run

ROOT = Path(__file__).resolve().parent.parent
TINY = ["iterations=2", "meta_batch_size=3", "episodes_per_task=2", "max_episode_steps=20",
        "policy.hidden_sizes=[16]", "eval.num_tasks=3", "eval.adapt_steps=1", "sampler.backend=local",
        "logger.wandb=false"]


def metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "wall_time_s"} for r in rows]


def test_cli_train_smoke_is_deterministic_and_writes_the_run_contract(cli, cli_process, tmp_path):
    runs = []
    for name, run in (("a", cli_process), ("b", cli)):  # a fresh interpreter, then this one
        result = run(["train", "maml_trpo/nav2d", *TINY, "seed=1", f"run_dir={tmp_path / name}"])
        assert result.code == 0, result.stderr
        assert "held-out" in result.stdout and "return" in result.stdout
        runs.append(tmp_path / name)
    a = metrics(runs[0])
    assert a == metrics(runs[1])
    assert [r["iteration"] for r in a] == [0, 1]
    for key in ("iteration", "env_steps", "train/return_pre", "train/return_post"):
        assert key in a[0]
    assert "wall_time_s" in json.loads((runs[0] / "metrics.jsonl").read_text().splitlines()[0])
    assert a[1]["env_steps"] > a[0]["env_steps"] > 0
    assert (runs[0] / "config.yaml").is_file() and RunDir(runs[0]).latest_checkpoint.is_file()
    ev = json.loads((runs[0] / "eval.json").read_text())
    assert ev["task_distribution"] == "nav2d" and ev["split"] == "test" and ev["unit"] == "gradient_steps"
    assert [row["k"] for row in ev["adaptation"]] == [0, 1]
    assert set(ev["adaptation"][0]) == {"k", "episodes", "return_mean", "return_std", "success_rate"}
    episodes = load_config("maml_trpo/nav2d", TINY).episodes_per_task
    assert [row["episodes"] for row in ev["adaptation"]] == [0, episodes]  # seen at k: k steps x episodes
    assert len(ev["per_task"]) == 3


def test_metaworld_metrics_have_success(tmp_path):
    cfg = load_config("maml_trpo/ml1_pick_place", [*TINY, "iterations=1", "max_episode_steps=10",
                                                    "policy.hidden_sizes=[8]", f"run_dir={tmp_path}"])
    Trainer(cfg).run()
    row = metrics(tmp_path)[0]
    assert 0.0 <= row["train/success_pre"] <= 1.0 and "train/success_post" in row


def test_checkpoint_round_trip_evaluates_identically(tmp_path):
    cfg = load_config("maml_trpo/nav2d", [*TINY, f"run_dir={tmp_path}"])
    trainer = Trainer(cfg)
    trainer.run()
    with Sampler(trainer.dist, trainer.learner.policy_spec, "local") as s:
        before = trainer.evaluate(s, 3, 1, seed=5)
    _, restored = load_run(tmp_path)
    with Sampler(restored.dist, restored.learner.policy_spec, "local") as s:
        after = restored.evaluate(s, 3, 1, seed=5)
    assert before == after
    for k, v in trainer.learner.meta.items():
        assert torch.equal(v, restored.learner.meta[k])


def test_cli_evaluate_writes_eval_json(cli, cli_process, tmp_path):
    assert cli(["train", "maml_trpo/nav2d", *TINY, "seed=4", "eval.adapt_steps=2", f"run_dir={tmp_path}"]).code == 0
    written = json.loads((tmp_path / "eval.json").read_text())
    # Without flags it evaluates as the run's final evaluation did (tasks, k, the run's seed),
    # in a fresh interpreter too.
    again = cli_process(["evaluate", str(tmp_path)])
    assert again.code == 0, again.stderr
    assert json.loads((tmp_path / "eval.json").read_text()) == written
    assert [row["k"] for row in written["adaptation"]] == [0, 1, 2] and written["seed"] == 4
    result = cli(["evaluate", str(tmp_path), "--adapt-steps", "2", "--tasks", "2", "--seed", "3"])
    assert result.code == 0, result.stderr
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert [row["k"] for row in ev["adaptation"]] == [0, 1, 2] and len(ev["per_task"]) == 2 and ev["seed"] == 3
    plot = cli(["plot", str(tmp_path), "--out", str(tmp_path / "curves.png")])
    assert plot.code == 0, plot.stderr
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def _recheck_module():
    spec = importlib.util.spec_from_file_location("recheck_results", ROOT / "scripts" / "recheck_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recheck_results_repeats_an_evaluation_and_finds_a_changed_number(cli, tmp_path):
    """scripts/recheck_results.py re-evaluates a copy of each run with the settings its
    eval.json records (here not the run's defaults: 2 tasks, seed 3, the mean), leaves the
    runs alone, finds numbers that are not what the weights give, tells a shift of every
    task from differences another draw of the noise could give, and falls back to the
    run's seed for a file that does not record one."""
    same = tmp_path / "runs" / "same"
    assert cli(["train", "maml_trpo/nav2d", *TINY, "seed=4", f"run_dir={same}"]).code == 0
    assert cli(["evaluate", str(same), "--tasks", "2", "--seed", "3", "--actions", "mean", "--adapt-steps", "0"]).code == 0
    ev = json.loads((same / "eval.json").read_text())
    first, second = ev["per_task"]
    returns = [ev["per_task"][t]["returns"][0] for t in (first, second)]
    shift = (max(returns) - min(returns)) / 4
    assert shift > 0
    changed = {"shifted": {first: shift, second: shift},  # a change of behaviour moves every task
               "noise": {first: shift, second: -shift},  # within the noise of 2 tasks
               "old": {}}  # a file from before the seed was recorded: the run's seed (4), other tasks
    files = {}
    for name, moves in changed.items():
        shutil.copytree(same, tmp_path / "runs" / name)
        edited = json.loads(json.dumps(ev))
        for task, move in moves.items():
            edited["per_task"][task]["returns"][0] += move
        if name == "old":
            del edited["seed"]
        files[name] = json.dumps(edited)
        (tmp_path / "runs" / name / "eval.json").write_text(files[name])
    files["same"] = (same / "eval.json").read_text()
    listing = sorted((tmp_path / "runs").rglob("*"))

    def recheck(*args):
        done = subprocess.run([sys.executable, "scripts/recheck_results.py", *map(str, args)], capture_output=True,
                              text=True, cwd=ROOT)
        lines = [line + "  " for line in done.stdout.splitlines() if line.startswith("[")]
        return done, {name: line for name in files for line in lines if f"runs{os.sep}{name}  " in line}

    done, lines = recheck(tmp_path / "runs")
    assert done.returncode == 1 and "2 of 4 runs reproduce" in done.stdout, done.stdout + done.stderr
    assert "] identical" in lines["same"] and "] consistent" in lines["noise"] and "] other tasks" in lines["old"]
    assert "] differs" in lines["shifted"] and f"max |diff| {shift:.3g} at per_task[" in lines["shifted"]
    for name, text in files.items():  # evaluated in copies
        assert (tmp_path / "runs" / name / "eval.json").read_text() == text
    assert sorted((tmp_path / "runs").rglob("*")) == listing
    done, _ = recheck(same, tmp_path / "runs" / "noise", "--exact")
    assert done.returncode == 1 and "1 of 2 runs reproduce" in done.stdout, done.stdout + done.stderr


def test_recheck_results_verdicts_on_hand_made_changes():
    """The verdicts of scripts/recheck_results.py's comparison on a 5-task file: noise-like
    changes pass, a common shift, one task far off, a NaN, another setting or a moved
    protocol number do not."""
    compare = _recheck_module().compare
    base = {"split": "test", "unit": "gradient_steps", "seed": 0, "adaptation": [{"k": 0, "episodes": 0}],
            "per_task": {t: {"params": {"goal": i}, "returns": [r], "success": [0.0]}
                         for i, (t, r) in enumerate(zip("abcde", [1.0, 2.0, 5.0, 3.0, 4.0], strict=True))},
            "metaworld_protocol": {"success_rate": 0.5, "return": 10.0, "per_task_success": {"x": 0.5},
                                   "settings": {"seed": 0, "wall_time_s": 3.0}}}

    def verdict(returns=None, protocol=True, **changes):
        new = json.loads(json.dumps(base))
        for t, r in zip("abcde", returns or [], strict=False):
            new["per_task"][t]["returns"][0] = r
        for path, value in changes.items():
            *parents, key = path.split("__")
            node = new
            for p in parents:
                node = node[int(p)] if p.isdigit() else node[p]
            node[key] = value
        return compare(base, new, 0.0, protocol)[0]

    assert verdict() == "identical"
    assert verdict([1.3, 1.8, 5.1, 2.7, 4.2]) == "consistent"  # changes +-0.3 around a mean of 0.02
    assert verdict([1.3, 2.2, 5.4, 3.3, 4.25]) == "differs"  # every task up by 0.2-0.4
    assert verdict([1e6, 2.0, 5.0, 3.0, 4.0]) == "differs"  # one task far off: the t statistic alone is 1
    assert verdict([float("nan"), 2.0, 5.0, 3.0, 4.0]) == "differs"
    assert verdict(adaptation__0__episodes=10) == "other settings"
    assert verdict(seed=3) == "other settings"
    assert verdict(per_task__a__params={"goal": 9}) == "other tasks"
    assert verdict(metaworld_protocol__settings__seed=1) == "other settings"
    assert verdict(metaworld_protocol__success_rate=0.6) == "differs"
    assert verdict(protocol=False, metaworld_protocol__success_rate=0.6) == "identical"  # not compared


def test_recheck_results_repeats_the_recorded_evaluation_start():
    """A protocol recorded before its evaluation start was (when recurrent learners' evaluation
    episodes continued) is re-run with ``continued``, not today's default; one recorded is
    re-run with what it says."""
    evaluate_args = _recheck_module().evaluate_args
    settings = {"meta_batch_size": 10, "goals_per_class": 50, "num_evals": 5, "adaptation_episodes": 10,
                "evaluation_episodes": 3, "seed": 0}
    committed = {"split": "test", "adaptation": [{"k": 0}, {"k": 1}], "per_task": {"a": {}},
                 "metaworld_protocol": {"settings": settings}}

    def start(**recorded):
        args = evaluate_args(committed | {"metaworld_protocol": {"settings": settings | recorded}}, True)
        return args[args.index("--evaluation-start") + 1]

    assert start() == "continued"
    assert start(evaluation_start="adapted") == "adapted"
    assert start(evaluation_start="continued") == "continued"
    assert "--evaluation-start" not in evaluate_args(committed, False)


@pytest.mark.parametrize("config, extra", [("maml_trpo/nav2d", []), ("rl2_ppo/nav2d", ["algo.gru_size=8"]),
                                           ("promp/nav2d", ["algo.adaptive_kl_penalty=true"]),
                                           ("varibad/nav2d", ["algo.gru_size=8", "algo.vae_pretrain_collections=1",
                                                              "algo.vae_pretrain_updates=2"])])
def test_resume_continues_to_the_same_metrics(config, extra, tmp_path):
    """Resuming from a checkpoint gives the uninterrupted run's metrics (ProMP's adapted
    KL penalty included: it changes every iteration here and lives in the checkpoint;
    VariBAD's VAE buffer and generator, after its VAE pretraining: its extra state; RL²'s
    Adam moments, which live beside the checkpoint)."""
    common = [*TINY, *extra, "checkpoint_every=1", "checkpoint_keep=2"]
    Trainer(load_config(config, [*common, "iterations=3", f"run_dir={tmp_path / 'full'}"])).run()
    Trainer(load_config(config, [*common, "iterations=2", f"run_dir={tmp_path / 'part'}"])).run()
    Trainer(load_config(config, [*common, "iterations=3", "resume=true", f"run_dir={tmp_path / 'part'}"])).run()
    full = metrics(tmp_path / "full")
    assert metrics(tmp_path / "part") == full
    if config.startswith("promp"):
        assert len({row["loss/kl_penalty_0"] for row in full}) == 3
    if config.startswith("rl2"):  # the optimiser's state is in the extra file the checkpoint names
        state = torch.load(tmp_path / "part" / "checkpoints" / "latest.pt", weights_only=True)
        assert state["learner"]["optimizer"] is None and state["extra_state"] == "extra/iter_000003.pt"
        moments = torch.load(tmp_path / "part" / "checkpoints" / state["extra_state"], weights_only=True)
        assert moments["extra"] is None and moments["optimizer"]["state"]
        # one extra file per kept checkpoint: iteration 1's went with its checkpoint
        assert sorted(p.name for p in (tmp_path / "part" / "checkpoints" / "extra").iterdir()) == \
            ["iter_000002.pt", "iter_000003.pt"]
        shutil.rmtree(tmp_path / "part" / "checkpoints" / "extra")  # evaluation needs the weights only
        assert load_run(tmp_path / "part")[1].start_iteration == 3


def test_resume_errors_leave_files_untouched(cli, tmp_path):
    result = cli(["train", "maml_trpo/nav2d", *TINY, "resume=true", f"run_dir={tmp_path / 'none'}"])
    assert result.code == 2 and "no checkpoint at" in result.stderr
    unnamed = cli(["train", *TINY, "resume=true", f"run_dir={tmp_path / 'none'}"])
    assert unnamed.code == 2 and "is not a run directory (no config.yaml) to resume" in unnamed.stderr
    assert cli(["train", *TINY, f"run_dir={tmp_path / 'r'}"]).code == 0
    again = cli(["train", *TINY, f"run_dir={tmp_path / 'r'}"])
    assert again.code == 2 and "already holds a run; pass resume=true" in again.stderr
    other = cli(["train", *TINY, "resume=true", "algo.name=maml_vpg", f"run_dir={tmp_path / 'r'}"])
    assert other.code == 2 and "checkpoint in" in other.stderr and "algo.name=maml_trpo" in other.stderr
    snapshot = (tmp_path / "r" / "metrics.jsonl").read_text()
    changed = cli(["train", *TINY, "resume=true", "seed=5", "algo.inner_lr=0.2",
                   f"run_dir={tmp_path / 'r'}"])
    assert changed.code == 2 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert "would change what it trains with (algo.inner_lr: 0.1 -> 0.2; seed: 0 -> 5)" in changed.stderr
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == snapshot
    nowhere = cli(["train", *TINY, "resume=true"])
    assert nowhere.code == 2 and "resume=true needs run_dir=" in nowhere.stderr
    # No config named: the run's own, with only what a resume may change.
    own = cli(["train", "resume=true", "iterations=3", "sampler.backend=local", f"run_dir={tmp_path / 'r'}"])
    assert own.code == 0, own.stderr
    assert [json.loads(line)["iteration"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    ckpt = RunDir(tmp_path / "r").latest_checkpoint
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    snapshot = (tmp_path / "r" / "metrics.jsonl").read_text()
    corrupt = cli(["train", *TINY, "resume=true", f"run_dir={tmp_path / 'r'}"])
    assert corrupt.code == 2 and "corrupt or unreadable" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == snapshot


def test_checkpoint_load_refuses_code(tmp_path):
    import pickle

    from metarl import checkpoint

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain data, so it is not a "
                                              "metarl checkpoint") as raised:
        checkpoint.load(path)
    assert "weights_only" not in str(raised.value)  # no advice to load it unsafely


def test_a_run_that_stopped_before_its_first_checkpoint_says_how_to_start_again(cli, tmp_path):
    run = tmp_path / "r"
    assert cli(["train", *TINY, f"run_dir={run}"]).code == 0
    shutil.rmtree(run / "checkpoints")  # as a crash or Ctrl-C before checkpoint_every iterations leaves it
    snapshot = (run / "metrics.jsonl").read_text()
    for resume, message in [("false", "holds a run that stopped before its first checkpoint, so it cannot "
                                      "resume: delete it or choose another run_dir"),
                            ("true", "the run stopped before its first, so it cannot resume; delete")]:
        result = cli(["train", *TINY, f"resume={resume}", f"run_dir={run}"])
        assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr
    assert (run / "metrics.jsonl").read_text() == snapshot
    (tmp_path / "file").write_text("")
    result = cli(["train", *TINY, f"run_dir={tmp_path / 'file'}"])
    assert result.code == 2 and "run_dir " + str(tmp_path / "file") + " is a file, not a directory" in result.stderr


def test_eval_actions_follow_the_config_and_the_evaluate_flag_and_maml_adapts_on_sampled_ones(cli, tmp_path):
    """With the mean as the action, a policy-gradient step has no exploration to learn
    from (here exactly zero: nav2d's std is state-independent), so MAML's curve would be
    flat: refused before training and by ``metarl evaluate``; k = 0 alone may use the mean."""
    run = tmp_path / "r"
    assert cli(["train", *TINY, "eval.every=1", f"run_dir={run}"]).code == 0
    assert json.loads((run / "eval.json").read_text())["deterministic"] is False  # MAML samples by default
    assert json.loads((run / "eval_history.jsonl").read_text().splitlines()[0])["deterministic"] is False
    eval_json = (run / "eval.json").read_text()
    result = cli(["evaluate", str(run), "--actions", "mean"])
    assert result.code == 2 and "MAML's family adapts by policy-gradient steps" in result.stderr
    assert (run / "eval.json").read_text() == eval_json  # nothing lost
    assert cli(["evaluate", str(run), "--actions", "mean", "--adapt-steps", "0"]).code == 0
    assert json.loads((run / "eval.json").read_text())["deterministic"] is True

    for args in (["eval.deterministic=true"], ["eval.deterministic=true", "eval.adapt_steps=0", "eval.every=1"]):
        result = cli(["train", *TINY, *args, f"run_dir={tmp_path / 'refused'}"])
        assert result.code == 2 and not (tmp_path / "refused").exists()
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.strip().endswith(
            "hold no exploration to learn from: sample them (eval.deterministic=false, --actions sample), "
            "or evaluate k = 0 alone (eval.adapt_steps=0, --adapt-steps 0)")


def test_a_run_saved_before_an_option_existed_keeps_what_it_ran_with(cli, tmp_path):
    """nav2d's unit_actions arrived after runs had been saved without it: those ran on
    displacement actions and keep them when evaluated or resumed; new runs record it."""
    import yaml

    run = tmp_path / "r"
    assert cli(["train", *TINY, "checkpoint_every=1", f"run_dir={run}"]).code == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["tasks"]["options"] == {"unit_actions": True}
    for path in (run / "checkpoints").glob("*.pt"):  # as an older version saved it
        state = torch.load(path, weights_only=True)
        del state["config"]["tasks"]["options"]["unit_actions"]
        torch.save(state, path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["tasks"]["options"]["unit_actions"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert load_run(run)[1].dist.unit_actions is False
    changed = cli(["train", *TINY, "resume=true", "iterations=3", "tasks.options.unit_actions=true", f"run_dir={run}"])
    assert changed.code == 2 and "tasks.options: {'unit_actions': False} -> {'unit_actions': True}" in changed.stderr
    assert cli(["train", "resume=true", "iterations=3", "sampler.backend=local", f"run_dir={run}"]).code == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["tasks"]["options"] == {"unit_actions": False}


def test_a_checkpoint_whose_networks_no_longer_fit_is_one_line(cli, tmp_path):
    """As an ant-goal run from before its observation gained contact forces: the same
    settings now build a wider first layer than the checkpoint holds."""
    run = tmp_path / "r"
    assert cli(["train", *TINY, f"run_dir={run}"]).code == 0
    path = run / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    meta = state["learner"]["meta"]
    first = next(k for k, v in meta.items() if v.dim() == 2)
    rows, cols = meta[first].shape
    meta[first] = torch.zeros(rows, cols + 3)  # a wider observation than nav2d's
    torch.save(state, path)
    result = cli(["evaluate", str(run), "--tasks", "1"])
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"does not fit the networks its settings build now (meta/{first}: ({rows}, {cols + 3}) saved, " \
           f"({rows}, {cols}) now)" in result.stderr


def test_evaluating_a_run_whose_config_was_edited_is_one_line(cli, tmp_path):
    run = tmp_path / "r"
    assert cli(["train", *TINY, f"run_dir={run}"]).code == 0
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("hidden_sizes:\n  - 16", "hidden_sizes:\n  - 32"))
    result = cli(["evaluate", str(run), "--tasks", "1"])
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "config.yaml no longer matches the checkpoint it sits beside (policy.hidden_sizes: [16] -> [32])" \
        in result.stderr


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    from metarl import checkpoint

    path = tmp_path / "checkpoints" / "latest.pt"
    checkpoint.save({"iteration": 1, "w": torch.arange(4.0)}, path)
    checkpoint.write_text(tmp_path / "metrics.jsonl", '{"iteration": 0}\n')

    def torn(obj, f):  # a write that dies halfway (disk full, a kill between the bytes)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save({"iteration": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    with pytest.raises(UnicodeEncodeError):
        checkpoint.write_text(tmp_path / "metrics.jsonl", "\ud800")  # fails while writing
    state = checkpoint.load(path)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.arange(4.0))
    assert (tmp_path / "metrics.jsonl").read_text() == '{"iteration": 0}\n'
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["latest.pt", "metrics.jsonl"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it


def test_metaworld_protocol_numbers_land_in_eval_json(cli, tmp_path):
    train = cli(["train", "maml_trpo/ml1_pick_place", *TINY, "iterations=1", "max_episode_steps=10",
                 "policy.hidden_sizes=[8]", "tasks.name=ml1/reach-v3", f"run_dir={tmp_path}"])
    assert train.code == 0, train.stderr
    # Meta-World+'s ML1 setting (10 envs, 50 goals, 5 rounds), episodes shortened.
    result = cli(["evaluate", str(tmp_path), "--protocol", "metaworld", "--max-episode-steps", "10",
                  "--tasks", "2", "--adapt-steps", "1"])
    assert result.code == 0, result.stderr
    protocol = json.loads((tmp_path / "eval.json").read_text())["metaworld_protocol"]
    assert 0.0 <= protocol["success_rate"] <= 1.0 and set(protocol["per_task_success"]) == {"reach-v3"}
    settings = protocol["settings"]
    assert (settings["meta_batch_size"], settings["goals_per_class"], settings["num_evals"]) == (10, 50, 5)
    assert (settings["adaptation_episodes"], settings["evaluation_episodes"]) == (10, 3)
    assert protocol["env_steps"] == json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["env_steps"]
    # Re-evaluated without --protocol: this checkpoint's protocol numbers stay, another's go.
    again = cli(["evaluate", str(tmp_path), "--tasks", "2", "--adapt-steps", "1"])
    assert again.code == 0, again.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["metaworld_protocol"] == protocol
    assert "Meta-World protocol (kept from eval.json)" in again.stdout
    ev = json.loads((tmp_path / "eval.json").read_text())
    ev["metaworld_protocol"]["env_steps"] += 1
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    again = cli(["evaluate", str(tmp_path), "--tasks", "2", "--adapt-steps", "1"])
    assert again.code == 0, again.stderr
    assert "metaworld_protocol" not in json.loads((tmp_path / "eval.json").read_text())
    bad = cli(["evaluate", str(tmp_path), "--protocol", "metaworld", "--meta-batch-size", "20"])
    assert bad.code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "valid: 1, 2, 5, 10, 25, 50" in bad.stderr


def test_periodic_evaluation_uses_one_held_out_set_and_leaves_eval_json_to_the_end(tmp_path):
    cfg = load_config("maml_trpo/nav2d", [*TINY, "iterations=3", "eval.every=1", "eval.adapt_steps=2",
                                          f"run_dir={tmp_path}"])
    trainer = Trainer(cfg)
    trainer.run()
    history = [json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [0, 1, 2]
    final = json.loads((tmp_path / "eval.json").read_text())
    assert all(h["per_task"].keys() == final["per_task"].keys() for h in history)  # the same held-out tasks
    assert [len(h["adaptation"]) for h in history] == [2, 2, 2] and len(final["adaptation"]) == 3
    rows = metrics(tmp_path)
    assert [r["eval/return_post"] for r in rows] == [h["adaptation"][-1]["return_mean"] for h in history]
    # The same episode seeds each time: the same policy evaluates to the same numbers.
    tasks = trainer.eval_tasks(cfg.eval.num_tasks, cfg.seed)
    with Sampler(trainer.dist, trainer.learner.policy_spec, "local") as s:
        again = [adaptation_curve(trainer.learner, s, tasks, 1, cfg.seed, trainer.max_steps) for _ in range(2)]
    assert again[0] == again[1]
    assert again[0]["adaptation"][0] == final["adaptation"][0]  # k = 0: the final evaluation's episodes


FAULTS_PROBE = """
import resource, sys, torch
from metarl.trainer import retain_freed_memory
if sys.argv[1] == "retain" and not retain_freed_memory():
    sys.exit(3)
numel = 64 * 2 ** 20 // 4  # 64 MB, above the largest mmap threshold glibc picks itself
for _ in range(3):  # faulted in, freed; the heap settles (an aligned request can miss a
    torch.ones(numel)  # freed chunk by a few bytes and grow the heap once more)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    assert torch.ones(numel).sum().item() == numel
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_retain_freed_memory_reuses_freed_tensors_pages():
    """Tensors as large as a meta-update's activations, freed and allocated again, reuse
    their pages: glibc keeps freed memory instead of unmapping it. Against the same loop in a
    process with malloc's defaults, where every free unmaps (a fault per page, or per huge
    page where the kernel backs them so), rather than a count that depends on the page size."""
    def faults(mode: str) -> int | None:
        proc = subprocess.run([sys.executable, "-c", FAULTS_PROBE, mode], capture_output=True, text=True)
        if proc.returncode == 3:
            return None
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout)

    retained = faults("retain")
    if retained is None:
        pytest.skip("not glibc: malloc's settings are left alone")
    default = faults("default")
    assert default >= 20  # at least one fault per unmapped allocation
    assert retained * 4 < default


def test_iteration_metrics_report_restarted_workers(tmp_path):
    cfg = load_config("maml_trpo/nav2d", [*TINY, f"run_dir={tmp_path}", "sampler.backend=process",
                                          "sampler.num_workers=2"])
    trainer = Trainer(cfg)
    with trainer.make_sampler() as sampler:
        assert "sampler/restarts" not in trainer.train_step(0, sampler)
        os.kill(sampler.worker_pids[1], signal.SIGKILL)
        assert trainer.train_step(1, sampler)["sampler/restarts"] == 1


def test_a_stopped_run_continues_in_the_same_process_as_if_uninterrupted(tmp_path, monkeypatch, default_sigint):
    """Ctrl-C in the first iteration (a notebook's interrupt): the run stops after it, at a
    checkpoint; calling run() again continues with the next iteration, one metrics row each."""
    from metarl.trainer import RunStopped

    args = [*TINY, "iterations=3", "checkpoint_every=10"]
    Trainer(load_config("maml_trpo/nav2d", [*args, f"run_dir={tmp_path / 'full'}"])).run()
    trainer = Trainer(load_config("maml_trpo/nav2d", [*args, f"run_dir={tmp_path / 'stopped'}"]))
    step, pressed = trainer.train_step, []

    def interrupted(iteration, sampler):
        if not pressed:  # once (a second would escape as KeyboardInterrupt and end pytest)
            pressed.append(iteration)
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the handler only takes note
        return step(iteration, sampler)

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(RunStopped, match="stopped after iteration 1, at its checkpoint"):
        trainer.run()
    assert (tmp_path / "stopped" / "checkpoints" / "iter_000001.pt").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    trainer.run()
    assert metrics(tmp_path / "stopped") == metrics(tmp_path / "full")


def test_ctrl_c_after_the_last_iterations_check_skips_the_final_evaluation(tmp_path, monkeypatch, default_sigint):
    from metarl.trainer import RunStopped

    trainer = Trainer(load_config("maml_trpo/nav2d", [*TINY, f"run_dir={tmp_path}"]))
    save = trainer.save

    def save_then_press(iterations_done, wall_time_s):
        save(iterations_done, wall_time_s)
        if iterations_done == 2:  # the last: Ctrl-C lands after the loop last looked
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(trainer, "save", save_then_press)
    with pytest.raises(RunStopped, match="stopped after iteration 2, at its checkpoint"):
        trainer.run()
    assert not RunDir(tmp_path).eval.exists()
    monkeypatch.setattr(trainer, "save", save)
    assert trainer.run()["adaptation"] and RunDir(tmp_path).eval.exists()  # what resume would do: evaluate


def test_a_trainer_that_failed_inside_an_iteration_does_not_run_again(tmp_path, monkeypatch):
    trainer = Trainer(load_config("maml_trpo/nav2d", [*TINY, f"run_dir={tmp_path}"]))
    step = trainer.train_step

    def fails_second(iteration, sampler):
        if iteration == 1:
            raise ValueError("a bug in the update")
        return step(iteration, sampler)

    monkeypatch.setattr(trainer, "train_step", fails_second)
    with pytest.raises(ValueError, match="a bug in the update"):
        trainer.run()
    with pytest.raises(RuntimeError, match="stopped inside an iteration"):  # its state is half-updated
        trainer.run()
