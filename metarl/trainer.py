"""The outer loop: sample tasks, collect, adapt, collect, update, log, checkpoint, evaluate."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import metarl.envs
from metarl import checkpoint
from metarl.algos import MamlLearner
from metarl.algos.rl2 import Rl2Learner
from metarl.algos.sb3 import Sb3Learner
from metarl.config import (
    ConfigError,
    Rl2Config,
    RunConfig,
    Sb3Config,
    build_config,
    save_config,
    to_dict,
)
from metarl.evaluation import adaptation_curve, format_table, write_eval
from metarl.logging import JsonlLogger, MultiLogger, WandbLogger, read_jsonl
from metarl.policies import GaussianMLPPolicy, RecurrentGaussianPolicy
from metarl.sampling import Sampler
from metarl.video import record_episode

CHECKPOINT = "checkpoints/latest.pt"


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA device is available here; use device=cpu")


def build(cfg: RunConfig) -> tuple[metarl.envs.TaskDistribution, torch.nn.Module, MamlLearner | Rl2Learner]:
    """Task distribution, policy and learner of a config (seeded by ``cfg.seed``)."""
    check_device(cfg.device)
    try:
        dist = metarl.envs.make(cfg.tasks.name, **cfg.tasks.options)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    obs_space, act_space = dist.spaces
    obs_dim, act_dim = int(np.prod(obs_space.shape)), int(np.prod(act_space.shape))
    torch.manual_seed(cfg.seed)
    p = cfg.policy
    if isinstance(cfg.algo, Sb3Config):
        if cfg.logger.video_every:
            raise ConfigError("logger.video_every is not supported for SB3 baselines; set it to 0")
        horizon = cfg.max_episode_steps or dist.horizon
        return dist, None, Sb3Learner(cfg.algo, dist, horizon, cfg.seed, cfg.device)
    if isinstance(cfg.algo, Rl2Config):
        if cfg.logger.video_every:
            raise ConfigError("logger.video_every is not supported for rl2_ppo yet; set it to 0")
        policy = RecurrentGaussianPolicy(obs_dim, act_dim, cfg.algo.gru_size, p.hidden_sizes,
                                         p.activation, p.init_std, p.min_std)
        return dist, policy, Rl2Learner(cfg.algo, policy, cfg.device, cfg.seed)
    policy = GaussianMLPPolicy(obs_dim, act_dim, p.hidden_sizes, p.activation, p.init_std,
                               p.std_type, p.min_std)
    return dist, policy, MamlLearner(cfg.algo, policy, cfg.device)


def collection_seed(seed: int, iteration: int, phase: int) -> int:
    """Seed of one collection; a pure function so a resumed run repeats it exactly."""
    return int(np.random.SeedSequence([seed, iteration, phase]).generate_state(1)[0])


class Trainer:
    """Runs one training run described by a :class:`RunConfig`."""

    def __init__(self, cfg: RunConfig, read_only: bool = False) -> None:
        """``read_only``: restore a run to evaluate it, changing none of its files."""
        self.cfg = cfg
        self.dist, self.policy, self.learner = build(cfg)
        self.run_dir = Path(cfg.run_dir or default_run_dir(cfg))
        self.start_iteration, self.env_steps, self.wall_offset = 0, 0, 0.0
        self.wandb_id: str | None = None
        if cfg.resume:
            self._resume(read_only)
        else:
            if (self.run_dir / CHECKPOINT).exists() or (self.run_dir / "metrics.jsonl").exists():
                raise ConfigError(f"{self.run_dir} already holds a run; pass resume=true to continue "
                                  "it (needs a checkpoint) or choose another run_dir")
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if not read_only:
            save_config(cfg, self.run_dir / "config.yaml")
        self.max_steps = cfg.max_episode_steps or self.dist.horizon

    # ----------------------------------------------------------------- main loop

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        logger = self._logger()
        if not getattr(self.learner, "trains", True):
            return self._adaptation_only(logger)
        sampler = self.make_sampler()
        start = time.perf_counter() - self.wall_offset
        bar = tqdm(range(self.start_iteration, cfg.iterations), initial=self.start_iteration,
                   total=cfg.iterations, desc="meta-iterations", disable=None, dynamic_ncols=True)
        try:
            for iteration in bar:
                if self.budget_spent:
                    break
                t0 = time.perf_counter()
                metrics = self.train_step(iteration, sampler)
                metrics["time/iteration_s"] = time.perf_counter() - t0
                if cfg.eval.every and (iteration + 1) % cfg.eval.every == 0:
                    metrics |= self._eval_metrics(sampler, iteration, logger)
                if cfg.logger.video_every and (iteration + 1) % cfg.logger.video_every == 0:
                    self._video(sampler, iteration, logger)
                row = {"iteration": iteration, "env_steps": self.env_steps,
                       "wall_time_s": time.perf_counter() - start, **metrics}
                logger.log(row)
                bar.set_postfix(steps_per_s=f"{metrics['time/env_steps_per_s']:.0f}",
                                pre=f"{metrics['train/return_pre']:.1f}",
                                post=f"{metrics['train/return_post']:.1f}")
                last = iteration + 1 == cfg.iterations or self.budget_spent
                if (iteration + 1) % cfg.checkpoint_every == 0 or last:
                    self.save(iteration + 1, row["wall_time_s"])
                if cfg.max_env_steps and not last:  # the bar's end: iterations the budget allows
                    per_iteration = self.env_steps / (iteration + 1)
                    bar.total = min(cfg.iterations, iteration + 1 + math.ceil(
                        (cfg.max_env_steps - self.env_steps) / per_iteration))
            result = self.evaluate(sampler, cfg.eval.num_tasks, cfg.eval.adapt_steps, seed=cfg.seed)
            logger.log_eval(result, self.env_steps)
        finally:
            bar.close()
            if sampler is not None:
                sampler.close()
            logger.close()
        return result

    @property
    def budget_spent(self) -> bool:
        """Whether the run has taken its ``max_env_steps``."""
        return self.cfg.max_env_steps is not None and self.env_steps >= self.cfg.max_env_steps

    def make_sampler(self) -> Sampler | None:
        """The rollout workers; None for learners that roll out on their own (SB3)."""
        if self.policy is None:
            return None
        s = self.cfg.sampler
        return Sampler(self.dist, self.policy.spec, s.backend, s.num_workers, s.ray_address, s.max_retries,
                       s.max_lanes)

    def _adaptation_only(self, logger: MultiLogger) -> dict[str, Any]:
        """sb3_finetune / sb3_scratch: no meta-training; the adaptation budgets are the run.
        One metrics.jsonl line per budget k (return before and after k episodes)."""
        start = time.perf_counter()
        try:
            result = self.evaluate(None, self.cfg.eval.num_tasks, self.cfg.eval.adapt_steps, self.cfg.seed)
            curve = result["adaptation"]
            for i, row in enumerate(curve):
                # fine-tuning timesteps so far (k episodes' worth of steps on every task)
                self.env_steps = row["k"] * self.max_steps * len(result["per_task"])
                line = {"iteration": i, "env_steps": self.env_steps, "wall_time_s": time.perf_counter() - start,
                        "train/return_pre": curve[0]["return_mean"], "train/return_post": row["return_mean"]}
                if row["success_rate"] is not None:
                    line |= {"train/success_pre": curve[0]["success_rate"], "train/success_post": row["success_rate"]}
                logger.log(line)
            logger.log_eval(result, self.env_steps)
        finally:
            logger.close()
        return result

    def train_step(self, iteration: int, sampler: Sampler) -> dict[str, float]:
        """One meta-iteration on freshly sampled train tasks (the learner owns its data flow)."""
        cfg = self.cfg
        tasks = self.dist.sample(cfg.meta_batch_size, "train", np.random.default_rng([cfg.seed, iteration]))
        sample_time = 0.0

        def collect(params, phase: int):
            nonlocal sample_time
            t0 = time.perf_counter()
            batch = sampler.collect(tasks, params, cfg.episodes_per_task,
                                    collection_seed(cfg.seed, iteration, phase), self.max_steps)
            sample_time += time.perf_counter() - t0
            return batch

        t0 = time.perf_counter()
        metrics, steps = self.learner.train_step(collect)
        self.env_steps += steps
        return metrics | {"time/sample_s": sample_time,
                          "time/update_s": time.perf_counter() - t0 - sample_time,
                          "time/env_steps_per_s": steps / max(sample_time, 1e-9)}

    # ----------------------------------------------------------------- evaluation

    def evaluate(self, sampler: Sampler, num_tasks: int, adapt_steps: int, seed: int,
                 split: str = "test", extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Adaptation curve on ``num_tasks`` tasks of ``split``, written to eval.json
        (with ``extra`` entries, e.g. Meta-World's protocol numbers)."""
        tasks = self.dist.sample(min(num_tasks, self.dist.split_size(split)), split,
                                 np.random.default_rng([seed, 7]))
        result = adaptation_curve(self.learner, sampler, tasks, self.cfg.episodes_per_task,
                                  adapt_steps, seed, self.max_steps) | (extra or {})
        write_eval(self.run_dir, result, self.dist.name, split)
        return result

    def _eval_metrics(self, sampler: Sampler, iteration: int, logger: MultiLogger) -> dict[str, float]:
        result = self.evaluate(sampler, self.cfg.eval.num_tasks, 1, seed=self.cfg.seed + iteration + 1)
        logger.log_eval(result, self.env_steps)
        out = {}
        for row in result["adaptation"]:
            tag = "pre" if row["k"] == 0 else "post"
            out[f"eval/return_{tag}"] = row["return_mean"]
            if row["success_rate"] is not None:
                out[f"eval/success_{tag}"] = row["success_rate"]
        return out

    def _video(self, sampler: Sampler, iteration: int, logger: MultiLogger) -> None:
        """One rollout on a test task after one adaptation step, to videos/ and W&B."""
        task = self.dist.sample(1, "test", np.random.default_rng([self.cfg.seed, iteration, 3]))[0]
        batch = sampler.collect([task], self.learner.policy_params, self.cfg.episodes_per_task,
                                collection_seed(self.cfg.seed, iteration, 99), self.max_steps)
        params = self.learner.adapt([batch])[0]
        path = self.run_dir / "videos" / f"iter_{iteration + 1:06d}.mp4"
        if record_episode(self.dist, task, self.policy.spec, params, path, self.max_steps):
            logger.log_video(path, self.env_steps)

    # ----------------------------------------------------------------- checkpoints

    def save(self, iteration: int, wall_time_s: float) -> None:
        """``checkpoints/iter_N.pt`` and ``latest.pt``, each written atomically; keeps the
        last ``checkpoint_keep`` iteration files."""
        state = {"iteration": iteration, "env_steps": self.env_steps, "wall_time_s": wall_time_s,
                 "learner": self.learner.state_dict(), "config": to_dict(self.cfg),
                 "wandb_id": self.wandb_id}
        folder = self.run_dir / "checkpoints"
        checkpoint.save(state, folder / f"iter_{iteration:06d}.pt")
        checkpoint.save(state, self.run_dir / CHECKPOINT)
        for old in sorted(folder.glob("iter_*.pt"))[: -self.cfg.checkpoint_keep]:
            old.unlink()

    def _resume(self, read_only: bool) -> None:
        state = checkpoint.load(self.run_dir / CHECKPOINT)
        old = state["config"]
        for key in ("algo", "tasks"):
            if old[key]["name"] != getattr(self.cfg, key).name:
                raise checkpoint.CheckpointError(
                    f"checkpoint in {self.run_dir} is for {key}.name={old[key]['name']}, "
                    f"not {getattr(self.cfg, key).name}; resume with the run's own config")
        self.learner.load_state_dict(state["learner"])
        self.start_iteration, self.env_steps = state["iteration"], state["env_steps"]
        self.wall_offset, self.wandb_id = state["wall_time_s"], state.get("wandb_id")
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists() and not read_only:  # lines logged after the checkpoint are redone
            kept = [row for row in read_jsonl(metrics) if row["iteration"] < self.start_iteration]
            checkpoint.write_text(metrics, "".join(json.dumps(row) + "\n" for row in kept))

    def _logger(self) -> MultiLogger:
        loggers: list = [JsonlLogger(self.run_dir / "metrics.jsonl")]
        lc = self.cfg.logger
        if lc.wandb:
            # Runs of one config share a group by default, so seeds aggregate in the UI.
            group = lc.group or f"{self.cfg.algo.name}-{self.cfg.tasks.name}"
            wb = WandbLogger(self.run_dir, to_dict(self.cfg), lc.project, lc.entity, group,
                             list(lc.tags), lc.name or self.run_dir.name, self.wandb_id)
            self.wandb_id = wb.run_id
            loggers.append(wb)
        return MultiLogger(*loggers)


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.algo.name}-{cfg.tasks.name.replace('/', '_')}-s{cfg.seed}-{stamp}"


def load_run(run_dir: Path) -> tuple[RunConfig, Trainer]:
    """A Trainer restored from a run directory's config and latest checkpoint."""
    import yaml

    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    data = yaml.safe_load(cfg_path.read_text())
    data["resume"], data["run_dir"] = True, str(run_dir)
    cfg = build_config(data)
    return cfg, Trainer(cfg, read_only=True)


__all__ = ["Trainer", "build", "format_table", "load_run"]
