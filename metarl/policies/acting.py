"""The policy acting: what a learner hands to rollouts, and the one object that turns
observations into action distributions for a set of concurrent episodes (lanes).

The sampler's workers, Meta-World's protocol agent and video recording all act through
:class:`Actor`, so a policy family (feed-forward, recurrent, and next context-conditioned)
is taught to act once, here, and the env-stepping code does not know which it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import Params, PolicySpec, one_blas_thread

CARRY_KEYS = ("h", "prev_action", "prev_reward")
"""A recurrent trial's state between episodes: GRU state, last action, last raw reward."""


@dataclass
class Acting:
    """What a policy acts with on N tasks (a learner's :meth:`acting`).

    ``params``: one parameter dict for every task, or a list of N (per-task adapted
    parameters). ``carry``: for a recurrent policy, the state each task's trial continues
    from, tensors with a leading N dim keyed by :data:`CARRY_KEYS`; None starts new trials.
    """

    params: Params | list[Params]
    carry: dict[str, Tensor] | None = None

    def param_sets(self, num_tasks: int) -> tuple[list[Params], list[int]]:
        """(distinct parameter sets, the set each task uses)."""
        if isinstance(self.params, dict):
            return [self.params], [0] * num_tasks
        if len(self.params) != num_tasks:
            raise ValueError(f"got {len(self.params)} parameter sets for {num_tasks} tasks; "
                             "pass one set or one per task")
        return list(self.params), list(range(num_tasks))


def group_bounds(groups: list[int]) -> list[tuple[int, int, int]]:
    """(group, first lane, end lane) of each contiguous run of equal ``groups``."""
    bounds, start = [], 0
    for lane in range(1, len(groups) + 1):
        if lane == len(groups) or groups[lane] != groups[start]:
            bounds.append((groups[start], start, lane))
            start = lane
    return bounds


class Actor:
    """A policy acting on ``n`` lanes in lockstep.

    Lane ``l`` belongs to forward group ``groups[l]`` (lanes of one group are contiguous)
    and group ``g`` acts with ``param_sets[g]``. A feed-forward policy computes each
    lane's row on its own (:meth:`~metarl.policies.GaussianMLPPolicy.rowwise`), so a
    lane's numbers do not depend on the other lanes, of its group or another; a recurrent
    policy steps the GRU once per group on the group's active lanes
    and carries each lane's state across its episodes, starting from ``carry`` (per lane)
    or from a new trial.

    ``act(lanes, obs, new)``: the mean and std for the active ``lanes`` (ascending) given
    their observations and 1 where an episode starts (``mean_std``: the same on arrays, for
    the sampler's lockstep); ``observe(lanes, actions, rewards)``:
    what those lanes did (recurrent policies remember it); ``carry()``: each lane's state.
    """

    def __init__(self, spec: PolicySpec, param_sets: list[dict[str, Any]], groups: list[int],
                 carry: dict[str, Tensor] | None = None, modules: list[nn.Module] | None = None) -> None:
        self.spec = spec
        self.bounds = group_bounds(groups)
        self.params = [{k: torch.as_tensor(v) for k, v in p.items()} for p in param_sets]
        n = len(groups)
        if spec.recurrent:
            self.policy = modules[0] if modules else frozen_copy(spec)
            self.state = ({k: v.clone() for k, v in carry.items()} if carry is not None else
                          {"h": self.policy.initial_state(n), "prev_action": torch.zeros(n, spec.act_dim),
                           "prev_reward": torch.zeros(n)})
            self.new = torch.zeros(n)
        else:
            if carry is not None:
                raise ValueError("a feed-forward policy carries no state between episodes")
            # Each group's forward is a snapshot of one module loaded with its parameters,
            # one per distinct parameter set (a worker's items often share theirs).
            module = modules[0] if modules else frozen_copy(spec)
            snapshots: dict[int, Any] = {}
            with torch.no_grad():
                for raw, p in zip(param_sets, self.params, strict=True):
                    if id(raw) not in snapshots:
                        for k, v in p.items():
                            module.get_parameter(k).copy_(v)
                        snapshots[id(raw)] = module.rowwise()
            self._rowwise = [snapshots[id(raw)] for raw in param_sets]

    def act(self, lanes: np.ndarray, obs: Tensor, new: np.ndarray) -> tuple[Tensor, Tensor]:
        if self.spec.recurrent:
            self.new[torch.from_numpy(lanes)] = torch.from_numpy(np.asarray(new, np.float32))
            return self._per_group(lanes, obs, self._recurrent_forward)
        with one_blas_thread():
            mean, std = self.mean_std(lanes, obs.detach().cpu().numpy(), None)
        return torch.from_numpy(np.ascontiguousarray(mean)), torch.from_numpy(np.ascontiguousarray(std))

    def mean_std(self, lanes: np.ndarray, obs: np.ndarray,
                 new: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`act` for the sampler's lockstep, on and to float32 arrays (``new`` may be
        None for a feed-forward policy, which does not read it). A feed-forward policy's
        forward runs in numpy, without a torch call, and must run inside
        :func:`~metarl.policies.one_blas_thread`; its std may be a read-only broadcast."""
        if not self.spec.recurrent:
            return self._per_group(lanes, obs, lambda g, _idx, x: self._rowwise[g](x))
        with torch.no_grad():
            mean, std = self.act(lanes, torch.from_numpy(obs), new)
        return mean.numpy(), std.numpy()

    def observe(self, lanes: np.ndarray, actions: Tensor | np.ndarray, rewards: np.ndarray | None) -> None:
        """The lanes' actions and rewards (None: no reward seen, the last one stays)."""
        if self.spec.recurrent:
            idx = torch.from_numpy(lanes)
            self.state["prev_action"][idx] = torch.as_tensor(actions)
            if rewards is not None:
                self.state["prev_reward"][idx] = torch.as_tensor(rewards, dtype=torch.float32)

    def carry(self) -> dict[str, Tensor] | None:
        return {k: v.clone() for k, v in self.state.items()} if self.spec.recurrent else None

    def restore(self, lanes: np.ndarray, carry: dict[str, Tensor]) -> None:
        """Set ``lanes``' state to theirs in ``carry`` (as :meth:`carry` returned it)."""
        if not self.spec.recurrent:
            raise ValueError("a feed-forward policy carries no state between episodes")
        idx = torch.from_numpy(lanes)
        for k, v in self.state.items():
            v[idx] = carry[k][idx]

    def _recurrent_forward(self, g: int, lanes: np.ndarray, obs: Tensor) -> tuple[Tensor, Tensor]:
        p, s, idx = self.params[g], self.state, torch.from_numpy(lanes)
        x = self.policy.inputs(obs, s["prev_action"][idx], s["prev_reward"][idx], self.new[idx],
                               p["reward_scale"])
        mean, std, _, s["h"][idx] = self.policy.step(x, s["h"][idx], p)
        return mean, std

    def _per_group(self, lanes: np.ndarray, obs: Any, forward: Any) -> tuple[Any, Any]:
        """``forward(group, lane indices, obs rows)`` on each group's active lanes, gathered
        in ``lanes`` order (tensors or, for ``obs`` an array, arrays)."""
        if len(self.bounds) == 1:  # every lane is the one group's
            return forward(self.bounds[0][0], lanes, obs)
        parts = []
        for g, lo, hi in self.bounds:
            a, b = np.searchsorted(lanes, (lo, hi))
            if b > a:
                parts.append((a, b, forward(g, lanes[a:b], obs[a:b])))
        if len(parts) == 1:
            return parts[0][2]
        shape = (len(lanes), parts[0][2][0].shape[-1])
        if isinstance(obs, np.ndarray):
            mean, std = np.empty(shape, np.float32), np.empty(shape, np.float32)
        else:
            mean, std = torch.empty(shape), torch.empty(shape)
        for a, b, (m, s) in parts:
            mean[a:b], std[a:b] = m, s
        return mean, std


def frozen_copy(spec: PolicySpec) -> nn.Module:
    """A gradient-free copy of the policy; building it leaves torch's global random stream
    where it was (a learner in the same process may be drawing from it)."""
    with torch.random.fork_rng(devices=[]):
        module = spec.build()
    module.requires_grad_(False)
    return module
