"""Videos of adapted rollouts (``logger.video_every``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from metarl.envs import Task, TaskDistribution
from metarl.extras import require
from metarl.policies import Params, PolicySpec

log = logging.getLogger(__name__)
_warned = False


def record_episode(dist: TaskDistribution, task: Task, spec: PolicySpec, params: Params,
                   path: Path, max_steps: int, seed: int = 0) -> Path | None:
    """Render one deterministic episode of the policy ``spec`` with ``params`` to an MP4.

    Returns None, after one warning line per process, where frames cannot be rendered
    (no GL backend for MuJoCo, or no ffmpeg writer); training goes on.
    """
    global _warned
    try:
        imageio = require("imageio.v2", "video", "logger.video_every")

        env = dist.make_env(task, render_mode="rgb_array")
        cpu = {k: v.detach().cpu() for k, v in params.items()}
        policy = spec.build()  # a CPU copy; the learner's module stays where it is
        obs, _ = env.reset(seed=seed)
        frames = [env.render()]
        for _ in range(max_steps):
            with torch.no_grad():
                mean, _ = torch.func.functional_call(policy, cpu, (torch.as_tensor(obs, dtype=torch.float32),))
            obs, _, term, trunc, _ = env.step(np.clip(mean.numpy(), env.action_space.low, env.action_space.high))
            frames.append(env.render())
            if term or trunc:
                break
        env.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimsave(path, [np.asarray(f, dtype=np.uint8) for f in frames],
                        fps=dist_fps(env), macro_block_size=1)
        return path
    except Exception as err:  # GL and codec failures vary by platform; video is optional
        if not _warned:
            _warned = True
            log.warning("metarl: videos skipped, cannot render %s (%s: %s); set MUJOCO_GL=egl or "
                        "osmesa and install the 'video' extra", dist.name, type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "")
        return None


def dist_fps(env) -> int:
    return int(env.metadata.get("render_fps", 20))
