"""PEARL's update speed and replay size at a config's shapes.

Builds the learner of ``pearl/<task>`` (networks, meta-batch, batch sizes as configured),
fills every train task's replay and encoder buffers with ``--rows`` synthetic transitions,
and times ``--steps`` gradient steps after one warm-up step. Prints gradient steps per
second and the replay's bytes per transition, now and at ``--env-steps`` collected.

    python scripts/bench_pearl.py                                # halfcheetah-vel, CPU
    python scripts/bench_pearl.py --config pearl/ml1_pick_place --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from metarl.config import load_config
from metarl.trainer import build


def bench(config: str, device: str, steps: int, rows: int, env_steps: int) -> dict:
    cfg = load_config(config, ["logger.wandb=false", f"device={device}", "algo.gradient_steps=1"])
    _, learner = build(cfg)
    g = torch.Generator().manual_seed(0)
    width = learner.replay.data.shape[2]
    for task in range(len(learner.train_tasks)):
        data = torch.randn(rows, width, generator=g)
        data[:, -1] = 0.0  # not terminated
        learner.replay.add(task, data)
        learner.encoder_buffer.add(task, data[:learner.encoder_buffer.capacity])
    learner.update(cfg.meta_batch_size)  # warm-up (allocations, kernels)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        learner.update(cfg.meta_batch_size)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    bytes_per_row = width * learner.replay.data.element_size()
    return {"config": config, "device": device, "meta_batch_size": cfg.meta_batch_size,
            "batch_size": cfg.algo.batch_size, "embedding_batch_size": cfg.algo.embedding_batch_size,
            "gradient_steps_per_s": steps / seconds, "replay_bytes_per_transition": bytes_per_row,
            "replay_mb_at_env_steps": env_steps * bytes_per_row / 2**20, "env_steps": env_steps,
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="pearl/halfcheetah-vel")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=1000, help="synthetic transitions per train task")
    ap.add_argument("--env-steps", type=int, default=1_000_000, help="report the replay's size at this many")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = bench(args.config, args.device, args.steps, args.rows, args.env_steps)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['config']} on {out['device']} ({out['threads']} threads): {out['gradient_steps_per_s']:.2f} "
          f"gradient steps/s ({out['meta_batch_size']} tasks x {out['batch_size']} transitions, context "
          f"{out['embedding_batch_size']}); replay {out['replay_bytes_per_transition']} B per transition, "
          f"{out['replay_mb_at_env_steps']:.0f} MB at {out['env_steps']:,} env steps")


if __name__ == "__main__":
    main()
