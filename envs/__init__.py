"""Task distributions for meta-RL (installed as ``metarl.envs``).

>>> import numpy as np, metarl.envs
>>> dist = metarl.envs.make("nav2d")
>>> tasks = dist.sample(4, split="train", rng=np.random.default_rng(0))
>>> env = dist.make_env(tasks[0])
"""

from .core import SPLITS, Split, Task, TaskDistribution
from .registry import make, names

__all__ = ["SPLITS", "Split", "Task", "TaskDistribution", "make", "names"]
