"""Runs people can watch and trust: W&B, plots, videos, exact resume after SIGKILL or Ctrl-C."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import with_default_sigint
from test_trainer import TINY, metrics
from wandb_records import config, history


def test_wandb_offline_history_holds_the_logged_metrics(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")  # not logged in -> offline
    args = [a for a in TINY if a != "logger.wandb=false"]
    result = cli(["train", "maml_trpo/nav2d", *args, "logger.wandb=true", "logger.tags=[smoke]",
                  f"run_dir={tmp_path}"])
    assert result.code == 0, result.stderr
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    rows = history(files[0])
    logged = [r for r in rows if "train/return_pre" in r]
    jsonl = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert [r["iteration"] for r in logged] == [0, 1]
    assert logged[0]["train/return_pre"] == jsonl["train/return_pre"]
    assert logged[0]["env_steps"] == jsonl["env_steps"]
    keys = {k for r in rows for k in r}
    for table in ("eval/adaptation_table", "eval/per_task", "eval/adaptation_curve_table"):
        assert f"{table}/_type" in keys  # W&B tables (and the line plot's table) were logged
    cfg = config(files[0])
    algo = cfg["algo"].get("value", cfg["algo"])
    assert algo["name"] == "maml_trpo"


def test_a_resume_sends_w_and_b_no_row_twice(cli, tmp_path, monkeypatch):
    """Rows logged after the checkpoint are redone on resume; W&B keeps the first copy."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "")  # offline
    args = [*[a for a in TINY if a != "logger.wandb=false"], "logger.wandb=true", "checkpoint_every=1",
            f"run_dir={tmp_path}"]
    assert cli(["train", "maml_trpo/nav2d", *args, "iterations=3"]).code == 0
    checkpoints = tmp_path / "checkpoints"
    shutil.copy(checkpoints / "iter_000002.pt", checkpoints / "latest.pt")  # as if killed after row 2 was logged
    resumed = cli(["train", "maml_trpo/nav2d", *args, "iterations=3", "resume=true"])
    assert resumed.code == 0, resumed.stderr
    shutil.copy(checkpoints / "iter_000001.pt", checkpoints / "latest.pt")  # and again, from further back
    again = cli(["train", "maml_trpo/nav2d", *args, "iterations=3", "resume=true"])
    assert again.code == 0, again.stderr
    files = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 3
    logged = [r["iteration"] for f in files for r in history(f) if "train/return_pre" in r]
    assert logged == [0, 1, 2]
    evals = [r for f in files for r in history(f) if "eval/per_task/_type" in r]
    assert len(evals) == 1  # the final evaluation, sent by the first run only
    assert [json.loads(line)["iteration"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [0, 1, 2]


def test_w_and_b_that_cannot_start_is_one_line_and_leaves_a_run_that_can(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "ofline")
    args = [*[a for a in TINY if a != "logger.wandb=false"], f"run_dir={tmp_path}"]
    result = cli(["train", "maml_trpo/nav2d", *args, "logger.wandb=true"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("metarl: error:")]
    assert result.code == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "W&B did not start (mode: Input should be 'online', 'offline'" in errors[0]
    assert not (tmp_path / "metrics.jsonl").exists()
    assert cli(["train", "maml_trpo/nav2d", *args, "logger.wandb=false"]).code == 0


def test_metrics_skip_a_torn_last_line_and_refuse_a_damaged_one(tmp_path):
    from metarl.checkpoint import CheckpointError
    from metarl.logging import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 0}\n{"iteration": 1}\n{"itera')
    assert read_jsonl(path) == [{"iteration": 0}, {"iteration": 1}]
    path.write_text('{"iteration": 0}\n{"itera\n{"iteration": 2}\n')
    with pytest.raises(CheckpointError, match="metrics.jsonl, line 2, is not JSON"):
        read_jsonl(path)


def test_plot_draws_several_runs_of_one_config_and_an_adaptation_panel(cli, tmp_path):
    for seed in (0, 1):
        assert cli(["train", "maml_trpo/nav2d", *TINY, f"seed={seed}", f"run_dir={tmp_path / str(seed)}"]).code == 0
    out = tmp_path / "curves.png"
    result = cli(["plot", str(tmp_path / "0"), str(tmp_path / "1"), "--out", str(out)])
    assert result.code == 0, result.stderr
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[1] > image.shape[0] * 1.5  # two panels side by side: curves + adaptation


@pytest.mark.parametrize("config", ["maml_trpo/nav2d", "rl2_ppo/nav2d"])
def test_video_of_an_adapted_rollout(cli, tmp_path, config):
    """MAML after one gradient step; RL² carrying its trial's state into the filmed episode."""
    result = cli(["train", config, *TINY, "iterations=1", "logger.video_every=1", f"run_dir={tmp_path}"])
    assert result.code == 0, result.stderr
    video = tmp_path / "videos" / "iter_000001.mp4"
    assert video.stat().st_size > 1000
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    assert meta["size"] == (128, 128) and sum(1 for _ in reader) >= 2


def test_sigkill_and_resume_reproduce_an_uninterrupted_run(cli, tmp_path):
    args = ["maml_trpo/nav2d", *TINY, "iterations=4", "checkpoint_every=1", "checkpoint_keep=2"]
    assert cli(["train", *args, f"run_dir={tmp_path / 'full'}"]).code == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "metarl.cli", "train", *args, f"run_dir={run}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "iter_000002.pt").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    # Killed mid-run, so the resume below has iterations left to redo.
    assert proc.wait() == -signal.SIGKILL
    assert len(metrics(run)) < 4
    resumed = cli(["train", *args, "resume=true", f"run_dir={run}"])
    assert resumed.code == 0, resumed.stderr
    assert metrics(run) == metrics(tmp_path / "full")
    assert sorted(p.name for p in (run / "checkpoints").glob("iter_*.pt")) == ["iter_000003.pt", "iter_000004.pt"]


def _train_until(args, log, metrics_file):
    """``metarl train ARGS`` in its own process group (as from a terminal), once
    ``metrics_file`` holds a row."""
    proc = subprocess.Popen([sys.executable, "-m", "metarl.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=log.open("w"), start_new_session=True, preexec_fn=with_default_sigint)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            metrics_file.exists() and metrics_file.read_text().count("\n") >= 1):
        time.sleep(0.02)
    assert proc.poll() is None, log.read_text()
    return proc


def test_ctrl_c_stops_at_the_end_of_the_iteration_with_a_checkpoint_and_resume_continues(cli, tmp_path):
    # Process workers, as a user runs: a terminal's Ctrl-C reaches them too, and they keep
    # collecting (a restart would log "died" and add sampler/restarts to the metrics).
    # A sweep of two seeds: the message also says how to run the seed not started.
    args = ["maml_trpo/nav2d", *TINY, "iterations=1000", "checkpoint_every=1000",
            "sampler.backend=process", "sampler.num_workers=2"]
    sweep, log = tmp_path / "stopped", tmp_path / "stderr.txt"
    run = tmp_path / "stopped-s0"
    proc = _train_until([*args, "seed=0,1", f"run_dir={sweep}"], log, run / "metrics.jsonl")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    done, text = len(metrics(run)), log.read_text()
    unstarted = shlex.join(["metarl", "train", *args, "seed=1", f"run_dir={sweep}-s1"])
    assert f"metarl: stopped after iteration {done}, at its checkpoint in {run}; `metarl train run_dir={run} " \
           f"resume=true` continues it; `{unstarted}` runs the seeds not started" in text, text
    assert "Traceback" not in text and "died" not in text and not (tmp_path / "stopped-s1").exists()
    assert (run / "checkpoints" / f"iter_{done:06d}.pt").is_file()  # not the 1000th: written at the stop
    resumed = cli(["train", *args, f"iterations={done + 1}", "resume=true", f"run_dir={run}"])
    assert resumed.code == 0, resumed.stderr
    # The uninterrupted reference on the local backend (the same batches, bit for bit).
    assert cli(["train", *args, "sampler.backend=local", f"iterations={done + 1}",
                f"run_dir={tmp_path / 'full'}"]).code == 0
    assert metrics(run) == metrics(tmp_path / "full")


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    # Iterations of seconds (about one on an idle 2-core machine), so the second Ctrl-C,
    # sent as soon as the first is acknowledged, lands inside the one the first let finish.
    args = ["maml_trpo/nav2d", *TINY, "iterations=1000", "meta_batch_size=20", "episodes_per_task=20",
            "max_episode_steps=100", "sampler.backend=process", "sampler.num_workers=2"]
    run, log = tmp_path / "interrupted", tmp_path / "stderr.txt"
    proc = _train_until([*args, f"run_dir={run}"], log, run / "metrics.jsonl")
    os.killpg(proc.pid, signal.SIGINT)
    deadline = time.time() + 60
    while time.time() < deadline and "Ctrl-C again to stop now" not in log.read_text():
        time.sleep(0.005)
    assert "Ctrl-C again to stop now" in log.read_text()
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.time()
    assert proc.wait(timeout=120) == 130
    # At once: the workers, which ignore the terminal's Ctrl-C, are killed mid-collection,
    # not waited for (5 s each).
    assert time.time() - t0 < 5
    assert "metarl: interrupted" in log.read_text() and "stopped after" not in log.read_text(), log.read_text()


def test_seed_sweep_runs_sibling_directories(cli, tmp_path):
    result = cli(["train", "maml_trpo/nav2d", *TINY, "iterations=1", "seed=3,4", f"run_dir={tmp_path / 'sweep'}"])
    assert result.code == 0, result.stderr
    for seed in (3, 4):
        assert json.loads((tmp_path / f"sweep-s{seed}" / "metrics.jsonl").read_text().splitlines()[0])["iteration"] == 0
    bad = cli(["train", *TINY, "seed=1,x"])
    assert bad.code == 2 and "expected seed=N or seed=N,M" in bad.stderr
