"""Sampler: (tasks, policy parameters) -> EpisodeBatch, on one of three backends.

- ``local``: a :class:`RolloutWorker` in this process (tests, debugging).
- ``process``: worker processes, each with its own envs and policy copy (one torch thread
  each). A collection sends each worker its tasks and parameters once and receives whole
  episodes back. A worker that dies mid-collection is restarted and its share collected
  again, up to ``max_retries`` times; after that the collection raises ``SamplerError``.
  An exception inside a worker (the env's or the policy's) is not retried, since it would
  recur: the collection raises ``WorkerError`` with the worker's traceback.
- ``ray``: the same workers as Ray actors (``ray.init(address=...)``), for many machines.

For the same seed a feed-forward policy's batch is the same, bit for bit, on every backend,
any number of workers and any ``max_lanes`` (see :mod:`metarl.sampling.worker`). A recurrent policy's is the
same for the same number of workers and ``max_lanes``: its trials sharing a parameter set go
through the GRU as one batch per lockstep, and a BLAS may round a row differently when the
batch has another size, so a different split over workers can move the last bit.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import numpy as np
import torch

from metarl.envs import Task, TaskDistribution
from metarl.policies import Params, PolicySpec, to_numpy
from metarl.policies.acting import Acting

from .batch import EpisodeBatch
from .worker import RolloutWorker, WorkItem


def stop_processes(conns: Sequence[Any], procs: Sequence[Any], timeout: float = 5) -> None:
    """Ask worker processes to exit (``None`` down each pipe), wait ``timeout`` seconds for
    each, and kill any still running."""
    for conn in conns:
        try:
            conn.send(None)
        except (BrokenPipeError, OSError):
            pass
    for proc in procs:
        proc.join(timeout=timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1)


_log = logging.getLogger(__name__)

RAY_RETRY_DELAY_S = 1.0
"""Wait before a Ray collection's failed share is resubmitted."""
RAY_RESTART_TIMEOUT_S = 120.0
"""How long one collection waits for restarting Ray actors."""


class SamplerError(RuntimeError):
    """Workers kept failing; the collection could not be completed."""


class WorkerError(RuntimeError):
    """A worker process raised while collecting; the message holds its traceback."""


@dataclass(frozen=True)
class _Raised:
    """What a worker process sends back instead of its episodes when collecting raised."""

    traceback: str


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while starting a worker process, which keeps that from its birth.

    A terminal's Ctrl-C reaches the whole process group: the parent decides (the trainer
    finishes its iteration on the first), and a worker lives until the parent closes or
    kills it. (Only the main thread may set handlers; elsewhere the worker sets it itself.)
    A Ctrl-C in the milliseconds of ``proc.start()`` is lost; blocking SIGINT instead would
    hold it, but a spawned child starts with an empty signal mask (Python 3.11, measured), so
    it would meet a Ctrl-C during its second of imports with Python's handler and die."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _process_main(conn: Any, dist: TaskDistribution, spec: PolicySpec, max_lanes: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see _sigint_ignored
    worker = RolloutWorker(dist, spec, max_lanes=max_lanes)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            try:
                result = worker.collect(**msg)
            except Exception:  # the parent raises it, with this traceback, once every worker is done
                result = _Raised(traceback.format_exc())
            conn.send(result)
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        worker.close()


class Sampler:
    """Collects episodes of a task distribution under given policy parameters.

    Args:
        dist: The task distribution (its envs are built inside the workers).
        spec: The policy's spec; workers build their own copy once.
        backend: ``local``, ``process`` or ``ray``.
        num_workers: Workers (0: one per CPU core). Ignored by ``local``.
        ray_address: Passed to ``ray.init``; None starts or joins a local instance.
        max_retries: Restarts of failed workers allowed within one collection.
        max_lanes: Most episodes a worker steps in lockstep (one env each; a task with
            more episodes than this still gets one lane per episode): more lanes spread
            the policy's per-step cost over more env steps, at ~20 MB per Meta-World env.
    """

    def __init__(self, dist: TaskDistribution, spec: PolicySpec, backend: str = "process",
                 num_workers: int = 0, ray_address: str | None = None, max_retries: int = 3,
                 max_lanes: int = 16) -> None:
        if backend not in ("local", "process", "ray"):
            raise ValueError(f"unknown sampler backend {backend!r}; valid: local, process, ray")
        self.dist, self.spec, self.backend = dist, spec, backend
        self.num_workers = 1 if backend == "local" else (num_workers or os.cpu_count() or 1)
        self.max_retries, self.max_lanes = max_retries, max_lanes
        self.restarts = 0
        """Workers restarted so far (a process that died, a Ray actor or node lost)."""
        self._in_flight = False  # a process collection started and not finished
        self._local: RolloutWorker | None = None
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._actors: list[Any] = []
        if backend == "local":
            self._local = RolloutWorker(dist, spec, single_thread=False, max_lanes=max_lanes)
        elif backend == "process":
            self._ctx = mp.get_context("spawn")
            for i in range(self.num_workers):
                self._start_process(i)
        else:
            self._start_ray(ray_address)

    # ------------------------------------------------------------------ public API

    def collect(self, tasks: Sequence[Task], acting: Acting | Params | Sequence[Params], episodes: int,
                seed: int, max_steps: int | None = None, deterministic: bool = False,
                first_episode: int = 0) -> EpisodeBatch:
        """Roll ``episodes`` episodes on each task.

        Args:
            tasks: N tasks.
            acting: What the policy acts with (:class:`Acting`: parameters, and for a
                recurrent policy the state each trial continues from), or just parameters:
                one dict for all tasks, or N of them (per-task adapted parameters).
            episodes: Episodes per task (E).
            seed: Seed of this collection (same seed, same batch; see above).
            max_steps: Episode length cap; defaults to the distribution's horizon.
            deterministic: Act with the policy's mean (evaluation).
            first_episode: Index of these episodes' first among each task's episodes:
                episode e is seeded as the task's episode ``first_episode + e``, so an
                adaptation that collects in rounds gives every episode its own seed.

        A recurrent policy's batch carries each trial's final state (``batch.carry``), to
        continue the trials in a later collection.
        """
        if not isinstance(acting, Acting):
            acting = Acting(acting if isinstance(acting, dict) else list(acting))
        param_sets, keys = acting.param_sets(len(tasks))
        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        max_steps = max_steps or self.dist.horizon
        arrays = [to_numpy(p) for p in param_sets]
        carry = None if acting.carry is None else to_numpy(acting.carry)
        items = [WorkItem(slot, task, keys[slot], episodes, first_episode,
                          None if carry is None else {k: v[slot] for k, v in carry.items()})
                 for slot, task in enumerate(tasks)]
        shares = [items[w::self.num_workers] for w in range(self.num_workers)]
        messages = [{"items": share, "params": {it.param_key: arrays[it.param_key] for it in share},
                     "seed": seed, "max_steps": max_steps, "deterministic": deterministic}
                    for share in shares]
        if self.backend == "local":
            results = [self._local.collect(**messages[0])]
        elif self.backend == "process":
            self._in_flight = True
            results = self._collect_processes(messages)
            self._in_flight = False
        else:
            results = self._collect_ray(messages)
        per_slot: list[dict[str, np.ndarray]] = [None] * len(tasks)  # type: ignore[list-item]
        for share, result in zip(shares, results, strict=True):
            for item, arrays_out in zip(share, result, strict=True):
                per_slot[item.slot] = arrays_out
        return _stack(per_slot, list(tasks))

    def close(self) -> None:
        # Workers interrupted mid-collection (Ctrl-C, an error) would finish it first: kill them.
        stop_processes(self._conns, self._procs, timeout=0 if self._in_flight else 5)
        self._in_flight = False
        self._procs, self._conns = [], []
        if self._local is not None:
            self._local.close()
        for actor in self._actors:
            import ray

            ray.kill(actor)
        self._actors = []

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    # ------------------------------------------------------------------ process backend

    def _start_process(self, i: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_process_main, args=(child, self.dist, self.spec, self.max_lanes),
                                 daemon=True,
                                 name=f"metarl-sampler-{i}")
        with _sigint_ignored():
            proc.start()
        child.close()
        if i < len(self._procs):
            self._procs[i], self._conns[i] = proc, parent
        else:
            self._procs.append(proc)
            self._conns.append(parent)

    def _collect_processes(self, messages: list[dict[str, Any]]) -> list[Any]:
        results: list[Any] = [None] * len(messages)
        pending = set(range(len(messages)))
        failures = 0
        for i in list(pending):
            if not self._send(i, messages[i]):
                failures = self._restart(i, messages[i], failures)
        while pending:
            waitables = {self._conns[i]: i for i in pending}
            sentinels = {self._procs[i].sentinel: i for i in pending}
            handled: set[int] = set()  # a worker's pipe and sentinel can both be ready
            for ready in wait(list(waitables) + list(sentinels)):
                i = waitables.get(ready, sentinels.get(ready))
                if i not in pending or i in handled:
                    continue
                handled.add(i)
                try:
                    if ready in waitables or self._conns[i].poll():
                        results[i] = self._conns[i].recv()
                        pending.discard(i)
                        continue
                except (EOFError, OSError):
                    pass
                failures = self._restart(i, messages[i], failures)
        # Raised only now, with every pipe drained, so the next collection reads its own results.
        raised = [(i, r) for i, r in enumerate(results) if isinstance(r, _Raised)]
        if raised:
            self._in_flight = False  # every pipe drained: the workers are idle
            (i, first), others = raised[0], [j for j, _ in raised[1:]]
            also = f" (workers {others} raised too)" if others else ""
            raise WorkerError(f"sampler worker {i} raised while collecting{also}:\n{first.traceback}")
        return results

    def _send(self, i: int, message: dict[str, Any]) -> bool:
        try:
            self._conns[i].send(message)
            return True
        except (BrokenPipeError, OSError):
            return False

    def _restart(self, i: int, message: dict[str, Any], failures: int) -> int:
        failures += 1
        # Its exit code, once reaped; if its pipe broke but it lives on, it is killed.
        stop_processes([], [self._procs[i]], timeout=1)
        code = self._procs[i].exitcode
        if failures > self.max_retries:
            raise SamplerError(f"sampler worker {i} died (exit code {code}) and the collection "
                               f"failed after {self.max_retries} restarts")
        hint = " (SIGKILL: out of memory?)" if code == -9 else ""
        _log.warning("sampler worker %d died (exit code %s%s); restarted, its share collected again", i, code, hint)
        self._start_process(i)
        self.restarts += 1
        if not self._send(i, message):
            return self._restart(i, message, failures)
        return failures

    # ------------------------------------------------------------------ ray backend

    def _start_ray(self, address: str | None) -> None:
        from metarl.extras import require

        ray = require("ray", "ray", "sampler.backend=ray")
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        # SPREAD: one actor per node before doubling up, so a cluster's nodes share the work.
        self._ray_worker = ray.remote(num_cpus=1, max_restarts=self.max_retries,
                                      scheduling_strategy="SPREAD")(RolloutWorker)
        self._actors = [self._ray_worker.remote(self.dist, self.spec, max_lanes=self.max_lanes)
                        for _ in range(self.num_workers)]

    def _collect_ray(self, messages: list[dict[str, Any]]) -> list[Any]:
        """Each message on its actor; a failed one is resubmitted. An actor that died (or
        its node, with the result) spends one of ``max_retries``; one that is restarting
        (``ActorUnavailableError``) is waited for, up to ``RAY_RESTART_TIMEOUT_S``."""
        import ray
        from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError

        results: list[Any] = [None] * len(messages)
        failures = 0
        deadline = time.monotonic() + RAY_RESTART_TIMEOUT_S
        while True:
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                return results
            refs = {i: self._actors[i].collect.remote(**messages[i]) for i in todo}
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref)
                except ActorUnavailableError:  # restarting (or its task died with it): wait for it
                    self.restarts += 1
                    if time.monotonic() > deadline:
                        raise SamplerError(f"ray worker {i} was still unavailable after "
                                           f"{RAY_RESTART_TIMEOUT_S:.0f} s") from None
                except (RayActorError, ObjectLostError):  # the actor, or its node with the result, died
                    _log.warning("ray worker %d (or its node) was lost; its share is collected again", i)
                    self.restarts += 1
                    failures += 1
                    if failures > self.max_retries:
                        raise SamplerError(f"ray worker {i} kept failing after "
                                           f"{self.max_retries} restarts") from None
            if any(r is None for r in results):
                # Give the cluster time to notice a lost node and restart the actor before
                # resubmitting: until then a call fails at once.
                time.sleep(RAY_RETRY_DELAY_S)


def _stack(per_slot: list[dict[str, np.ndarray]], tasks: list[Task]) -> EpisodeBatch:
    """Per-task padded arrays -> one EpisodeBatch trimmed to the longest episode."""
    t_max = max(int(r["mask"].sum(-1).max()) for r in per_slot)
    with_success = all("success" in r for r in per_slot)

    def cat(key: str, trim: bool = True) -> torch.Tensor:
        return torch.from_numpy(np.stack([r[key][:, :t_max] if trim else r[key] for r in per_slot]))

    carry = {k.removeprefix("carry."): cat(k, trim=False) for k in per_slot[0] if k.startswith("carry.")}
    return EpisodeBatch(
        obs=cat("obs"), actions=cat("actions"), rewards=cat("rewards"), log_probs=cat("log_probs"),
        terminated=cat("terminated"), truncated=cat("truncated"), mask=cat("mask"),
        last_obs=cat("last_obs", trim=False), success=cat("success") if with_success else None,
        tasks=tasks, carry=carry or None)
