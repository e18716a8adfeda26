"""Where an RL² run's PPO update goes: one fresh batch from a run's checkpoint, then the
update one epoch at a time.

Prints whether the learner's recomputed log-probs equal the sampler's (a mismatch would
inflate every ratio), the policy's std, the share of action dimensions whose mean lies
outside the action bounds (the env clips those, so the reward says nothing about them), and
after each epoch the exact Gaussian KL from the collecting policy, split between those
dimensions and the rest, with the share of ratios outside PPO's clip range.

    python scripts/diagnose_rl2_update.py RUN_DIR [algo.key=value ...]

The run directory is copied to a temporary folder first (its files are left as they are);
the optimiser's state is used where the checkpoint has it beside it (``checkpoints/extra``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from metarl.algos.base import TrainContext
from metarl.algos.rl2 import Rl2Learner, to_trials
from metarl.checkpoint import CheckpointError
from metarl.config import build_config
from metarl.errors import ConfigError
from metarl.policies import gaussian_kl, gaussian_log_prob
from metarl.trainer import Trainer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("overrides", nargs="*", help="algo.key=value, e.g. algo.lr=1e-4")
    args = ap.parse_args()
    if not (args.run_dir / "config.yaml").is_file():
        print(f"error: {args.run_dir} is not a run directory (no config.yaml)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run_dir, run)
        data = yaml.safe_load((run / "config.yaml").read_text())
        data |= {"resume": True, "run_dir": str(run)}
        try:
            changed = copy.deepcopy(data)
            for item in args.overrides:
                key, _, value = item.partition("=")
                if not key.startswith("algo.") or not value:
                    raise ConfigError(f"overrides here are algo.key=value, got {item!r}")
                changed["algo"][key.removeprefix("algo.")] = yaml.safe_load(value)
            algo = build_config(changed).algo  # validated and typed
            # The run resumes with its own settings (a resume refuses others); the update under
            # study then runs with the overrides.
            trainer = Trainer(build_config(data))
        except (ConfigError, CheckpointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        learner = trainer.learner
        if not isinstance(learner, Rl2Learner):
            print(f"error: {args.run_dir} is not an RL² run (algo.name {data['algo']['name']!r})", file=sys.stderr)
            return 2
        learner.cfg = algo
        for group in learner.optimizer.param_groups:
            group["lr"] = algo.lr
        cfg = trainer.cfg
        print(f"iteration {trainer.start_iteration}, optimiser state {'restored' if learner.optimizer.state else 'absent'}")
        with trainer.make_sampler() as sampler:
            ctx = TrainContext(trainer.start_iteration, trainer.dist, sampler, trainer.seeds, cfg.meta_batch_size,
                               cfg.episodes_per_task, trainer.max_steps, trainer.paths)
            tasks = ctx.train_tasks()
            batch = ctx.collect(tasks, learner.acting(learner.init_adaptation(tasks)), phase=0)
        trials = to_trials(batch, learner.policy, learner.device)
        h0 = learner.policy.initial_state(trials.x.shape[0]).to(learner.device)
        valid = trials.mask
        with torch.no_grad():
            mean, std, _, _ = learner.policy(trials.x, h0)
            gap = (gaussian_log_prob(mean, std, trials.actions) - trials.log_probs)[valid].abs().max().item()
        low, high = (torch.as_tensor(b, dtype=mean.dtype, device=mean.device) for b in
                     (trainer.dist.spaces[1].low, trainer.dist.spaces[1].high))
        outside = (mean < low) | (mean > high)
        print(f"largest |log-prob(learner) - log-prob(sampler)|: {gap:.3g}")
        print(f"std: mean {std[valid].mean():.4f}; action dimensions with the mean outside the bounds: "
              f"{outside[valid].float().mean():.3f}")
        epochs = learner.cfg.ppo_epochs
        learner.cfg = dataclasses.replace(learner.cfg, ppo_epochs=1)
        for epoch in range(epochs):
            learner.update(batch)
            with torch.no_grad():
                new_mean, new_std, _, _ = learner.policy(trials.x, h0)
                # per action dimension: the helper sums over its last axis, here of size 1
                kl = gaussian_kl(*(v.unsqueeze(-1) for v in (mean, std, new_mean, new_std)))
                log_ratio = gaussian_log_prob(new_mean, new_std, trials.actions) - trials.log_probs
                clip = ((log_ratio.exp() - 1).abs() > learner.cfg.ppo_clip)[valid].float().mean()
            kl_out, kl_in = ((kl * outside).sum(-1)[valid].mean(), (kl * ~outside).sum(-1)[valid].mean())
            print(f"epoch {epoch}: KL {kl_out + kl_in:.4f} (dimensions outside the bounds {kl_out:.4f}, "
                  f"inside {kl_in:.4f}), ratios outside the clip range {clip:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
