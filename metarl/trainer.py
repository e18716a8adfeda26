"""The outer loop: sample tasks, collect, adapt, collect, update, log, checkpoint, evaluate."""

from __future__ import annotations

import ctypes
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import metarl.envs
from metarl import checkpoint
from metarl.algos import LearnerSetup, MetaLearner, TrainContext, algorithm
from metarl.config import (
    ConfigError,
    RunConfig,
    build_config,
    read_config_file,
    resume_changes,
    save_config,
    saved_with_versioned_options,
    to_dict,
    with_versioned_options,
)
from metarl.evaluation import (
    adaptation_curve,
    check_eval_actions,
    curve_metrics,
    eval_record,
    format_table,
    write_eval,
)
from metarl.logging import JsonlLogger, MultiLogger, WandbLogger, read_jsonl
from metarl.rundir import RunDir
from metarl.sampling import Sampler
from metarl.seeding import Seeds
from metarl.video import record_episode


def retain_freed_memory() -> bool:
    """Keep the memory of freed tensors in this process's heap for the next ones (glibc
    only; elsewhere a no-op). Returns whether the setting took effect.

    A meta-update allocates and frees tensors of hundreds of MB: one activation of ML1
    MAML-TRPO's batch is 100k steps x 512 units, 205 MB. glibc serves each allocation that
    large with a fresh ``mmap`` and unmaps it when freed, so every new tensor faults in and
    zeroes its pages again. On a 2-core VM that was a quarter to a half of the update's
    time, spent in the kernel (docs/numbers.md). With ``mmap`` off for ``malloc`` and no trimming of the
    heap, freed memory is reused; the price is that the process keeps its peak memory until
    it exits. Process-wide: it changes how this process's ``malloc`` works from now on.
    """
    libc = ctypes.CDLL(None)  # the symbols this process already has loaded
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    # mallopt takes an int; glibc reads the trim threshold as size_t, so -1 means "never".
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, -1))


class RunStopped(KeyboardInterrupt):
    """Ctrl-C during training: the run finished its iteration, wrote its checkpoint and stopped.

    A ``KeyboardInterrupt``, so whatever does not know it unwinds as for any Ctrl-C; its
    message says where the run stopped and how it continues (``metarl`` prints it)."""

    def __init__(self, iterations_done: int, run_dir: Path, resumable: bool) -> None:
        self.iterations_done, self.run_dir, self.resumable = iterations_done, run_dir, resumable
        super().__init__(self.describe(f"`metarl train run_dir={shlex.quote(str(run_dir))} resume=true` "
                                       "continues it"))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.iterations_done, self.run_dir, self.resumable)

    def describe(self, continue_with: str) -> str:
        """The stop, then ``continue_with`` (how to continue), or why it cannot."""
        where = f"stopped after iteration {self.iterations_done}, at its checkpoint in {self.run_dir}"
        if not self.resumable:
            return f"{where} (this learner does not resume; the checkpoint evaluates)"
        return f"{where}; {continue_with}"


class _StopOnInterrupt:
    """Within the block, the first Ctrl-C (SIGINT) only sets ``requested``: the training
    loop finishes its iteration, checkpoints and raises :class:`RunStopped`. The second
    raises ``KeyboardInterrupt`` at once, as usual. Inert outside the main thread or where
    someone else already handles SIGINT."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopOnInterrupt:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        # os.write, not print: a handler that interrupts a write to stderr must not write through it again.
        try:
            os.write(2, b"\nmetarl: stopping at the end of the iteration, at a checkpoint (Ctrl-C again to stop now)\n")
        except OSError:  # no stderr to tell: the stop happens all the same
            pass

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA device is available here; use device=cpu")


def load_run_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The latest checkpoint of the run in ``run_dir`` (tensors and plain data only)."""
    return checkpoint.load(RunDir(Path(run_dir)).latest_checkpoint)


def build(cfg: RunConfig, run_dir: RunDir | None = None) -> tuple[metarl.envs.TaskDistribution, MetaLearner]:
    """Task distribution and learner of a config (the policy seeded by ``cfg.seed``)."""
    check_device(cfg.device)
    try:
        dist = metarl.envs.make(cfg.tasks.name, **cfg.tasks.options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    seeds = Seeds(cfg.seed)
    setup = LearnerSetup(cfg.algo, dist, cfg.policy, torch.device(cfg.device), seeds, cfg.episodes_per_task,
                         cfg.max_episode_steps or dist.horizon, run_dir or RunDir(Path(".")), load_run_checkpoint)
    torch.manual_seed(seeds.torch_init)
    return dist, algorithm(cfg.algo.name).build(setup)


class Trainer:
    """Runs one training run described by a :class:`RunConfig`."""

    def __init__(self, cfg: RunConfig, read_only: bool = False) -> None:
        """``read_only``: restore a run's weights to evaluate it, changing none of its files
        and reading none of the optimiser's or extra state beside its checkpoint."""
        retain_freed_memory()
        self.run_dir = Path(cfg.run_dir or default_run_dir(cfg))
        self.paths = RunDir(self.run_dir)
        self._check_run_dir(cfg.resume)  # before build(): ML45's takes tens of seconds
        # Read once: its config settings the versioned task options, _resume restores the rest.
        self._checkpoint = (checkpoint.load(self.paths.latest_checkpoint)
                            if cfg.resume and self.paths.latest_checkpoint.is_file() else None)
        saved = None if self._checkpoint is None else saved_with_versioned_options(self._checkpoint["config"])
        self.cfg = cfg = with_versioned_options(cfg, saved)
        self.seeds = Seeds(cfg.seed)
        self.dist, self.learner = build(cfg, self.paths)
        if not read_only:  # before hours of training, not at the evaluation after them
            check_eval_actions(self.learner, cfg.eval.deterministic, max(cfg.eval.adapt_steps, int(cfg.eval.every > 0)))
        # The task pools now, not inside the first iteration, whose update time they would
        # join (Meta-World's: ~3 s to build ML1's benchmark, tens of seconds for ML45's).
        self.dist.tasks("train")
        self.start_iteration, self.env_steps, self.wall_offset = 0, 0, 0.0
        self.wandb_id: str | None = None
        self._mid_iteration = False  # an iteration began and did not complete: run() may not continue
        if cfg.resume:
            self._resume(read_only)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if not read_only:
            save_config(cfg, self.paths.config)
        self.max_steps = cfg.max_episode_steps or self.dist.horizon

    # ----------------------------------------------------------------- main loop

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self._mid_iteration:
            raise RuntimeError("this Trainer stopped inside an iteration (an error or a second Ctrl-C): "
                               "its state is partly updated; continue from the checkpoint with a new "
                               "Trainer and resume=true")
        logger = self._logger()
        sampler = self.make_sampler()
        if not self.learner.trains:
            return self._adaptation_only(sampler, logger)
        start = time.perf_counter() - self.wall_offset
        bar = tqdm(range(self.start_iteration, cfg.iterations), initial=self.start_iteration,
                   total=cfg.iterations, desc="meta-iterations", disable=None, dynamic_ncols=True)
        try:
            with _StopOnInterrupt() as stop:
                self._train_loop(bar, sampler, logger, start, stop)
            if stop.requested:  # after the last iteration's checkpoint: the evaluation is what resume does
                raise RunStopped(self.start_iteration, self.run_dir, self.learner.resumes_exactly)
            result = self.evaluate(sampler, cfg.eval.num_tasks, cfg.eval.adapt_steps, seed=cfg.seed)
            logger.log_eval(result, self.env_steps)
        finally:
            bar.close()
            sampler.close()
            logger.close(failed=sys.exc_info()[0] is not None)
        return result

    def _train_loop(self, bar: tqdm, sampler: Sampler, logger: MultiLogger, start: float,
                    stop: _StopOnInterrupt) -> None:
        """The meta-iterations ``bar`` counts, each logged; a checkpoint every
        ``checkpoint_every``, at the last and where a Ctrl-C asked to stop."""
        cfg = self.cfg
        for iteration in bar:
            if self.budget_spent:
                break
            self._mid_iteration = True
            t0 = time.perf_counter()
            metrics = self.train_step(iteration, sampler)
            metrics["time/iteration_s"] = time.perf_counter() - t0
            if cfg.eval.every and (iteration + 1) % cfg.eval.every == 0:
                metrics |= self._periodic_eval(sampler, iteration, logger)
            if cfg.logger.video_every and (iteration + 1) % cfg.logger.video_every == 0:
                self._video(sampler, iteration, logger)
            row = {"iteration": iteration, "env_steps": self.env_steps,
                   "wall_time_s": time.perf_counter() - start, **metrics}
            logger.log(row)
            bar.set_postfix(steps_per_s=f"{metrics['time/env_steps_per_s']:.0f}",
                            pre=f"{metrics['train/return_pre']:.1f}",
                            post=f"{metrics['train/return_post']:.1f}")
            last = iteration + 1 == cfg.iterations or self.budget_spent
            stopping = stop.requested  # read once: a Ctrl-C from here on stops after the next iteration
            if (iteration + 1) % cfg.checkpoint_every == 0 or last or stopping:
                self.save(iteration + 1, row["wall_time_s"])
            # Where a later run() (or resume) starts.
            self.start_iteration, self.wall_offset = iteration + 1, row["wall_time_s"]
            self._mid_iteration = False
            if stopping:
                raise RunStopped(iteration + 1, self.run_dir, self.learner.resumes_exactly)
            if cfg.max_env_steps and not last:  # the bar's end: iterations the budget allows
                per_iteration = self.env_steps / (iteration + 1)
                bar.total = min(cfg.iterations, iteration + 1 + math.ceil(
                    (cfg.max_env_steps - self.env_steps) / per_iteration))

    @property
    def budget_spent(self) -> bool:
        """Whether the run has taken its ``max_env_steps``."""
        return self.cfg.max_env_steps is not None and self.env_steps >= self.cfg.max_env_steps

    def make_sampler(self) -> Sampler:
        """The rollout workers, acting with the learner's policy."""
        s = self.cfg.sampler
        return Sampler(self.dist, self.learner.policy_spec, s.backend, s.num_workers, s.ray_address, s.max_retries,
                       s.max_lanes)

    def _adaptation_only(self, sampler: Sampler, logger: MultiLogger) -> dict[str, Any]:
        """sb3_finetune / sb3_scratch: no meta-training; the adaptation budgets are the run.
        One metrics.jsonl line per budget k (return before and after k episodes)."""
        start = time.perf_counter()
        try:
            result = self.evaluate(sampler, self.cfg.eval.num_tasks, self.cfg.eval.adapt_steps, self.cfg.seed)
            curve = result["adaptation"]
            for i, row in enumerate(curve):
                # fine-tuning timesteps so far (k episodes' worth of steps on every task)
                self.env_steps = row["episodes"] * self.max_steps * len(result["per_task"])
                line = {"iteration": i, "env_steps": self.env_steps, "wall_time_s": time.perf_counter() - start,
                        "train/return_pre": curve[0]["return_mean"], "train/return_post": row["return_mean"]}
                if row["success_rate"] is not None:
                    line |= {"train/success_pre": curve[0]["success_rate"], "train/success_post": row["success_rate"]}
                logger.log(line)
            logger.log_eval(result, self.env_steps)
        finally:
            sampler.close()
            logger.close(failed=sys.exc_info()[0] is not None)
        return result

    def train_step(self, iteration: int, sampler: Sampler) -> dict[str, float]:
        """One meta-iteration: the learner trains with this iteration's context."""
        cfg = self.cfg
        ctx = TrainContext(iteration, self.dist, sampler, self.seeds, cfg.meta_batch_size, cfg.episodes_per_task,
                           self.max_steps, self.paths)
        t0 = time.perf_counter()
        metrics = self.learner.train_step(ctx)
        self.env_steps += ctx.env_steps
        metrics |= {"time/sample_s": ctx.sample_time_s,
                    "time/update_s": time.perf_counter() - t0 - ctx.sample_time_s,
                    "time/env_steps_per_s": ctx.env_steps / max(ctx.sample_time_s, 1e-9)}
        if sampler.restarts:  # only once a worker has died: the batches are the same, the time is not
            metrics["sampler/restarts"] = sampler.restarts
        return metrics

    # ----------------------------------------------------------------- evaluation

    def eval_tasks(self, num_tasks: int, seed: int, split: str = "test") -> list:
        """The held-out task set of evaluations with ``seed`` (one fixed set per run)."""
        return self.dist.sample(min(num_tasks, self.dist.split_size(split)), split, Seeds(seed).eval_tasks())

    def evaluate(self, sampler: Sampler, num_tasks: int, adapt_steps: int, seed: int,
                 split: str = "test", extra: dict[str, Any] | None = None,
                 deterministic: bool | None = None) -> dict[str, Any]:
        """Adaptation curve on ``num_tasks`` tasks of ``split``, written to eval.json
        (with ``extra`` entries, e.g. Meta-World's protocol numbers); ``deterministic``
        unset: ``eval.deterministic``."""
        tasks = self.eval_tasks(num_tasks, seed, split)
        deterministic = self.cfg.eval.deterministic if deterministic is None else deterministic
        # The seed too, so the file says how to repeat it (scripts/recheck_results.py does).
        result = {"seed": seed} | adaptation_curve(self.learner, sampler, tasks, adapt_steps, seed, self.max_steps,
                                                   deterministic) | (extra or {})
        write_eval(self.paths.eval, result, self.dist.name, split)
        return result

    def _periodic_eval(self, sampler: Sampler, iteration: int, logger: MultiLogger) -> dict[str, float]:
        """One adaptation step on the run's fixed held-out tasks (the final evaluation's,
        with the same episode seeds, so the curve moves only with learning); appended to
        eval_history.jsonl, leaving eval.json to the final evaluation."""
        cfg = self.cfg
        tasks = self.eval_tasks(cfg.eval.num_tasks, cfg.seed)
        result = adaptation_curve(self.learner, sampler, tasks, 1, cfg.seed, self.max_steps, cfg.eval.deterministic)
        line = {"iteration": iteration, "env_steps": self.env_steps, **eval_record(result, self.dist.name, "test")}
        with self.paths.eval_history.open("a") as f:
            f.write(json.dumps(line) + "\n")
        logger.log_eval(result, self.env_steps)
        return curve_metrics(result)

    def _video(self, sampler: Sampler, iteration: int, logger: MultiLogger) -> None:
        """One rollout on a test task after one adaptation step, to videos/ and W&B."""
        task = self.dist.sample(1, "test", self.seeds.video_task(iteration))[0]
        seed = self.seeds.video_rollout(iteration)
        state = self.learner.init_adaptation([task], seed)
        batch = sampler.collect([task], self.learner.acting(state), self.learner.adaptation_episodes, seed,
                                self.max_steps)
        acting = self.learner.acting(self.learner.adapt(state, batch))
        path = self.paths.video(iteration + 1)
        if record_episode(self.dist, task, self.learner.policy_spec, acting, path, self.max_steps):
            logger.log_video(path, self.env_steps)

    # ----------------------------------------------------------------- checkpoints

    def save(self, iteration: int, wall_time_s: float) -> None:
        """``checkpoints/iter_N.pt`` and ``latest.pt``, each written atomically; keeps the
        last ``checkpoint_keep`` iteration files.

        State that only training needs goes to ``checkpoints/extra/iter_N.pt`` first: the
        optimiser's (Adam's two moments per weight are two thirds of an RL² checkpoint) and a
        learner's large state (``extra_state_dict``, e.g. replay buffers). The checkpoint keeps
        what evaluation needs and names that file, so a kill between the writes leaves
        ``latest.pt`` pointing at a complete file, and each file stays small enough to commit
        with an unfinished run (ML10 RL²: 1.9 MB and 3.8 MB instead of one 5.7 MB file)."""
        learner = self.learner.state_dict()
        training = {"optimizer": learner.get("optimizer"), "extra": self.learner.extra_state_dict()}
        state = {"iteration": iteration, "env_steps": self.env_steps, "wall_time_s": wall_time_s,
                 "learner": learner, "config": to_dict(self.cfg), "wandb_id": self.wandb_id}
        has_training = training["optimizer"] is not None or training["extra"] is not None
        if has_training:
            path = self.paths.extra_state / f"iter_{iteration:06d}.pt"
            checkpoint.save(training, path)
            if "optimizer" in learner:
                state["learner"] = learner | {"optimizer": None}
            state["extra_state"] = str(path.relative_to(self.paths.checkpoints))
        checkpoint.save(state, self.paths.iteration_checkpoint(iteration))
        checkpoint.save(state, self.paths.latest_checkpoint)
        for old in self.paths.iteration_checkpoints()[: -self.cfg.checkpoint_keep]:
            old.unlink()
        if has_training:  # the extra files of checkpoints no longer kept (iter_N.pt names extra/iter_N.pt)
            kept = {p.name for p in self.paths.iteration_checkpoints()}
            for old in self.paths.extra_state.glob("iter_*.pt"):
                if old.name not in kept:
                    old.unlink()

    def _check_run_dir(self, resume: bool) -> None:
        """One clear line for a run directory this run cannot start or resume in."""
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"run_dir {self.run_dir} is a file, not a directory")
        checkpointed = self.paths.latest_checkpoint.exists()
        if resume or not (checkpointed or self.paths.metrics.exists()):
            return  # resuming reports a missing checkpoint itself
        if checkpointed:
            raise ConfigError(f"{self.run_dir} already holds a run; pass resume=true to continue it "
                              "or choose another run_dir")
        raise ConfigError(f"{self.run_dir} holds a run that stopped before its first checkpoint, "
                          "so it cannot resume: delete it or choose another run_dir")

    def _resume(self, read_only: bool) -> None:
        if not read_only and not self.learner.resumes_exactly:
            raise ConfigError(f"{self.cfg.algo.name} runs cannot resume: the checkpoint holds the policy's "
                              "weights, not the rest of the learner's state; start it again in a new "
                              "run_dir (its checkpoint still evaluates)")
        if not self.paths.latest_checkpoint.exists() and self.paths.metrics.exists():
            raise checkpoint.CheckpointError(
                f"no checkpoint at {self.paths.latest_checkpoint}: the run stopped before its first, so "
                + ("there is nothing to evaluate" if read_only else
                   f"it cannot resume; delete {self.run_dir} or choose another run_dir to start again"))
        state = self._checkpoint if self._checkpoint is not None else checkpoint.load(self.paths.latest_checkpoint)
        self._checkpoint = None  # the learner holds its state now
        old = saved_with_versioned_options(state["config"])
        for key in ("algo", "tasks"):
            if old[key]["name"] != getattr(self.cfg, key).name:
                raise checkpoint.CheckpointError(
                    f"checkpoint in {self.run_dir} is for {key}.name={old[key]['name']}, "
                    f"not {getattr(self.cfg, key).name}; resume with the run's own config")
        changes = resume_changes(old, self.cfg)
        if changes and read_only:
            raise checkpoint.CheckpointError(
                f"{self.paths.config} no longer matches the checkpoint it sits beside ({'; '.join(changes)}); "
                "restore the run's settings to evaluate it")
        if changes:
            raise checkpoint.CheckpointError(
                f"resuming {self.run_dir} would change what it trains with ({'; '.join(changes)}); "
                f"resume with its own settings: `metarl train run_dir={self.run_dir} resume=true` reads "
                "them from its config.yaml")
        learner = state["learner"]
        training = {"optimizer": None, "extra": None}
        if state.get("extra_state") and not read_only:  # evaluation needs the weights only
            training = self._training_state(state["extra_state"])
        if training["optimizer"] is not None:
            learner = learner | {"optimizer": training["optimizer"]}
        mismatch = _shape_mismatch(learner, self.learner.state_dict())
        if mismatch:  # same settings, other shapes: the task family's spaces changed since it ran
            raise checkpoint.CheckpointError(
                f"the checkpoint in {self.run_dir} does not fit the networks its settings build now "
                f"({mismatch}): its task family's observation or action space has changed since it "
                "ran (see the README's task table)")
        self.learner.load_state_dict(learner)
        if training["extra"] is not None:
            self.learner.load_extra_state_dict(training["extra"])
        self.start_iteration, self.env_steps = state["iteration"], state["env_steps"]
        self.wall_offset, self.wandb_id = state["wall_time_s"], state.get("wandb_id")
        if not read_only:  # lines logged after the checkpoint are redone
            for path in (self.paths.metrics, self.paths.eval_history):
                if path.exists():
                    kept = [row for row in read_jsonl(path) if row["iteration"] < self.start_iteration]
                    checkpoint.write_text(path, "".join(json.dumps(row) + "\n" for row in kept))

    def _training_state(self, name: str) -> dict[str, Any]:
        """The extra file ``latest.pt`` names, as ``{"optimizer", "extra"}``; a file written
        before the optimiser's state moved there holds the learner's extra state alone."""
        path = self.paths.checkpoints / name
        if not path.is_file():
            raise checkpoint.CheckpointError(
                f"{self.paths.latest_checkpoint} names {name} (the optimiser's state and the learner's "
                f"buffers), which is missing: copy checkpoints/extra/ with the run to resume it "
                f"(evaluating it needs latest.pt only)")
        state = checkpoint.load(path)
        return state if set(state) == {"optimizer", "extra"} else {"optimizer": None, "extra": state}

    def _logger(self) -> MultiLogger:
        loggers: list = [JsonlLogger(self.paths.metrics)]
        lc = self.cfg.logger
        if lc.wandb:
            # Runs of one config share a group by default, so seeds aggregate in the UI.
            group = lc.group or f"{self.cfg.algo.name}-{self.cfg.tasks.name}"
            wb = WandbLogger(self.run_dir, to_dict(self.cfg), lc.project, lc.entity, group,
                             list(lc.tags), lc.name or self.run_dir.name, self.wandb_id)
            self.wandb_id = wb.run_id
            loggers.append(wb)
        return MultiLogger(*loggers)


def _shape_mismatch(saved: Any, current: Any, path: str = "") -> str | None:
    """``"key: saved shape vs current shape"`` for the first tensor both nested states hold
    with different shapes; None when every shared one fits."""
    if isinstance(saved, torch.Tensor) and isinstance(current, torch.Tensor):
        return None if saved.shape == current.shape else \
            f"{path.lstrip('/')}: {tuple(saved.shape)} saved, {tuple(current.shape)} now"
    if isinstance(saved, dict) and isinstance(current, dict):
        pairs = [(saved[k], current[k], f"{path}/{k}") for k in saved if k in current]
    elif isinstance(saved, list | tuple) and isinstance(current, list | tuple):
        pairs = [(a, b, f"{path}/{i}") for i, (a, b) in enumerate(zip(saved, current, strict=False))]
    else:
        return None
    return next((m for a, b, p in pairs if (m := _shape_mismatch(a, b, p))), None)


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.algo.name}-{cfg.tasks.name.replace('/', '_')}-s{cfg.seed}-{stamp}"


def load_run(run_dir: Path) -> tuple[RunConfig, Trainer]:
    """A Trainer restored from a run directory's config and latest checkpoint."""
    cfg_path = RunDir(run_dir).config
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    data = read_config_file(cfg_path)
    data["resume"], data["run_dir"] = True, str(run_dir)
    cfg = build_config(data)
    return cfg, Trainer(cfg, read_only=True)


__all__ = ["Trainer", "build", "format_table", "load_run", "load_run_checkpoint"]
