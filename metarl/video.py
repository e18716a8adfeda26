"""Videos of adapted rollouts (``logger.video_every``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from metarl.envs import Task, TaskDistribution
from metarl.extras import require
from metarl.policies import Params, PolicySpec
from metarl.policies.acting import Acting, Actor

log = logging.getLogger(__name__)
_warned = False


def record_episode(dist: TaskDistribution, task: Task, spec: PolicySpec, acting: Acting | Params,
                   path: Path, max_steps: int, seed: int = 0) -> Path | None:
    """Render one deterministic episode of the policy ``spec`` acting with ``acting`` (for
    this one task: parameters, and a recurrent policy's carried state) to an MP4.

    Returns None, after one warning line per process, where frames cannot be rendered
    (no GL backend for MuJoCo, or no ffmpeg writer); training goes on.
    """
    global _warned
    try:
        imageio = require("imageio.v2", "video", "logger.video_every")

        env = dist.make_env(task, render_mode="rgb_array")
        if not isinstance(acting, Acting):
            acting = Acting(acting)
        params = acting.params if isinstance(acting.params, dict) else acting.params[0]
        actor = Actor(spec, [{k: v.detach().cpu() for k, v in params.items()}], [0], acting.carry)
        low, high = env.action_space.low, env.action_space.high
        lane = np.zeros(1, np.int64)
        obs, _ = env.reset(seed=seed)
        frames, new = [env.render()], np.ones(1, np.float32)
        for _ in range(max_steps):
            with torch.no_grad():
                mean, _ = actor.act(lane, torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1), new)
            obs, reward, term, trunc, _ = env.step(spec.env_action(mean[0].numpy(), low, high))
            actor.observe(lane, mean, np.array([reward], np.float32))
            frames.append(env.render())
            new[:] = 0.0
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
