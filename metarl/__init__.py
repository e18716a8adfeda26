"""metarl: meta-reinforcement learning for robot control, in PyTorch."""

__version__ = "0.1.0"
