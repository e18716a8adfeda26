"""Sampler throughput: env steps/s of several ways to roll the same episodes.

For each task family, side by side in one run:
  (a) one env stepped in a plain loop with the policy, one observation at a time;
  (b) gymnasium's AsyncVectorEnv over N envs, the policy batched in the main process
      (for Meta-World, the benchmark's own gym.make_vec("Meta-World/ML1-train", ...));
  (c) metarl's process sampler with 1 and 2 workers;
  (d) metarl's ray sampler with 2 workers (when ray is installed);
the raw env.step rate without any policy, on the collection's tasks and stepping the
actions the policy takes there (the overhead's reference: the same physics work), and the
ceiling: two independent single-env loops in two processes at once, each stepping the task
its sampler worker rolls with those actions, their rates summed. Beside the
ratios, where a worker's time goes: its own share (policy, noise, recording) and how much
slower each env step is inside the worker than alone; and with 2 workers, how long the
faster one waits for the slower (each worker rolls a fixed share of the episodes, the
ceiling's loops a fixed time, so a CPU slower than the other during a collection costs
the sampler and not the ceiling).

    python scripts/bench_sampler.py [--families ml1/pick-place-v3 halfcheetah-vel] [--metaworld-stock] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import gymnasium as gym
import numpy as np
import torch

import metarl.envs
from metarl.policies import GaussianMLPPolicy
from metarl.sampling import Sampler


def plain_loop(dist, policy, task, steps: int, with_policy: bool = True, seconds: float | None = None,
               ready=None, actions: np.ndarray | None = None) -> float:
    """Env steps/s of one env stepped in a loop: ``steps`` steps, or as many as fit in
    ``seconds``. Without the policy it cycles through ``actions`` (default: ``steps``
    uniform ones); ``ready()`` runs after the env is built and before the clock starts."""
    env = dist.make_env(task)
    obs, _ = env.reset(seed=0)
    params = policy.params()
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    fixed = (rng.uniform(low, high, size=(steps, *env.action_space.shape)).astype(np.float32)
             if actions is None else actions)
    if ready is not None:
        ready()
    t0 = time.perf_counter()
    i = 0
    while (i < steps) if seconds is None else (time.perf_counter() - t0 < seconds):
        if with_policy:
            with torch.no_grad():
                mean, std = torch.func.functional_call(policy, params, (torch.as_tensor(obs, dtype=torch.float32),))
                action = (mean + std * torch.randn_like(std)).numpy().clip(low, high)
        else:
            action = fixed[i % len(fixed)]
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            obs, _ = env.reset()
        i += 1
    return i / (time.perf_counter() - t0)


def policy_actions(dist, policy, tasks, episodes: int, max_steps: int) -> list[np.ndarray]:
    """The actions the policy takes on each task (a collection's episodes in order, clipped
    to the env's bounds as the worker clips them): what the env-only loops step, so that
    they do the sampler's physics work (a unit-std Gaussian policy sits at pick-place's
    bounds about a third of the time, uniform actions never do; whether that changes a
    step's cost is ``env_step_policy_actions_vs_uniform`` in the output)."""
    with Sampler(dist, policy.spec, backend="local") as sampler:
        batch = sampler.collect(tasks, policy.params(), episodes, seed=1, max_steps=max_steps)
    space = dist.spaces[1]
    return [batch.actions[i][batch.mask[i]].numpy().clip(space.low, space.high) for i in range(len(tasks))]


def env_step_only(dist, policy, tasks, steps: int, actions: list[np.ndarray] | None = None) -> float:
    """Env steps/s of the env alone (no policy), ``steps`` split evenly over ``tasks``,
    each task's env stepped in turn with ``actions[i]`` (default: uniform actions): the
    reference for the same work as a collection on these tasks (a task's step cost depends
    on where its goal and object sit)."""
    per_task = max(1, steps // len(tasks))
    seconds = sum(per_task / plain_loop(dist, policy, task, per_task, with_policy=False,
                                        actions=None if actions is None else actions[i])
                  for i, task in enumerate(tasks))
    return per_task * len(tasks) / seconds


def _ceiling_lane(args) -> float:
    name, fast, hidden, task, actions, barrier, seconds = args
    torch.set_num_threads(1)
    dist = metarl.envs.make(name, **({} if fast else {"fast": False}))
    obs_space, act_space = dist.spaces
    return plain_loop(dist, GaussianMLPPolicy(obs_space.shape[0], act_space.shape[0], hidden), task, 10000,
                      with_policy=False, seconds=seconds, ready=barrier.wait, actions=actions)


def ceiling(name: str, fast: bool, hidden: list[int], tasks: list, actions: list[np.ndarray], seconds: float,
            processes: int = 2) -> float:
    """The machine's ceiling for ``processes`` workers: that many independent single-env
    loops (env.step only) stepping at once for the same ``seconds``, their rates summed;
    loop ``i`` steps ``tasks[i % len(tasks)]``, the task the sampler's worker ``i`` rolls,
    with the policy's actions there.
    (Loops of a fixed step count would not all run at once: the first to finish leaves the
    others the machine to themselves, and the sum overstates what two can do together.)"""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        with ctx.Pool(processes) as pool:
            return sum(pool.map(_ceiling_lane, [(name, fast, hidden, tasks[i % len(tasks)],
                                                 actions[i % len(tasks)], barrier, seconds)
                                                for i in range(processes)]))


def async_vector(dist, policy, tasks, num_envs: int, steps: int) -> float:
    """Env steps/s of gymnasium's AsyncVectorEnv over ``num_envs`` envs, the policy batched
    here: Meta-World's own ML1 vector env where it can be built (each of its sub-envs needs
    at least one of the 50 goals, so at most 50), else one of this distribution's envs per
    process."""
    if dist.name.startswith("ml1/") and num_envs <= 50:
        import metaworld  # noqa: F401  (registers the Meta-World/... ids)

        envs = gym.make_vec("Meta-World/ML1-train", env_name=dist.name.removeprefix("ml1/"),
                            meta_batch_size=num_envs, vector_strategy="async", seed=0,
                            total_tasks_per_cls=num_envs * (50 // num_envs))  # goals must divide evenly
        if hasattr(envs, "call"):
            try:  # metaworld 3.1.1: a fresh ML vector env needs sample_tasks before reset
                envs.call("sample_tasks")
            except AttributeError:
                pass
    else:
        chosen = [tasks[i % len(tasks)] for i in range(num_envs)]
        fns = [lambda t=t: dist.make_env(t) for t in chosen]
        envs = gym.vector.AsyncVectorEnv(fns)
    obs, _ = envs.reset(seed=0)
    params = policy.params()
    low, high = envs.single_action_space.low, envs.single_action_space.high
    n = 0
    t0 = time.perf_counter()
    while n < steps:
        with torch.no_grad():
            mean, std = torch.func.functional_call(policy, params, (torch.as_tensor(obs, dtype=torch.float32),))
            actions = (mean + std * torch.randn_like(mean)).numpy().clip(low, high)
        obs, *_ = envs.step(actions)
        n += num_envs
    rate = n / (time.perf_counter() - t0)
    envs.close()
    return rate


def _cpu_seconds(pid: int) -> float:
    """A process's CPU time (user + system) so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metarl_rate(dist, policy, tasks, episodes: int, backend: str, workers: int, max_steps: int,
                repeats: int = 1) -> tuple[float, float, float | None]:
    """Median env steps/s over ``repeats`` collections; the main process's CPU seconds per
    wall second while the workers collect; and (process backend, Linux) the median
    straggler loss: the share of a collection's wall time its workers' mean CPU time falls
    short of, their mean idle share (a worker is busy on its CPU from the moment its share
    arrives until it sends its episodes back; with 2 workers, where the slower never idles,
    half of what the faster waited)."""
    with Sampler(dist, policy.spec, backend=backend, num_workers=workers) as sampler:
        sampler.collect(tasks, policy.params(), episodes, seed=0, max_steps=5)  # start-up, env creation
        pids = sampler.worker_pids if backend == "process" and os.path.exists("/proc/self/stat") else []
        rates, losses, cpu, wall = [], [], 0.0, 0.0
        for r in range(repeats):
            busy0 = [_cpu_seconds(p) for p in pids]
            t0, c0 = time.perf_counter(), time.process_time()
            batch = sampler.collect(tasks, policy.params(), episodes, seed=1 + r, max_steps=max_steps)
            elapsed = time.perf_counter() - t0
            cpu, wall = cpu + time.process_time() - c0, wall + elapsed
            rates.append(batch.env_steps / elapsed)
            if pids:
                busy = np.subtract([_cpu_seconds(p) for p in pids], busy0)
                losses.append(1 - float(busy.mean()) / elapsed)
        return float(np.median(rates)), cpu / wall, float(np.median(losses)) if losses else None


def worker_overhead(dist, policy, tasks, episodes: int, max_steps: int, max_lanes: int = 16) -> tuple[float, float]:
    """The rollout worker's own time (the policy, noise, clipping, recording) as a share of
    its envs' time (``env.step`` and ``env.reset``, which the env-only loop pays too),
    measured on the worker's own episodes in this process, so machine noise hits both
    sides of the ratio alike; and the envs' time per env step (resets included)."""
    from metarl.policies import to_numpy
    from metarl.sampling.worker import RolloutWorker, WorkItem

    worker = RolloutWorker(dist, policy.spec, max_lanes=max_lanes)
    # An item with more episodes than max_lanes would still step as one lockstep: split it.
    per_item = min(episodes, max_lanes)
    items = [WorkItem(i, task, 0, min(per_item, episodes - first), first)
             for i, task in enumerate(tasks) for first in range(0, episodes, per_item)]
    params = {0: to_numpy(policy.params())}
    worker.collect(items, params, seed=0, max_steps=5)  # builds the envs
    in_env, steps = [0.0], [0]

    def timed(method, count):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                in_env[0] += time.perf_counter() - t0
                steps[0] += count
        return wrapper

    for pool in worker._envs.values():
        for env in pool:
            env.step, env.reset = timed(env.step, 1), timed(env.reset, 0)
    t0 = time.perf_counter()
    worker.collect(items, params, seed=1, max_steps=max_steps)
    total = time.perf_counter() - t0
    worker.close()
    return total / in_env[0] - 1, in_env[0] / steps[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["ml1/pick-place-v3", "halfcheetah-vel"])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--episodes", type=int, default=10, help="per task; N envs = tasks * episodes")
    ap.add_argument("--repeats", type=int, default=3,
                    help="measurements of each rate and ratio (medians; the ratios pair measurements taken back to back)")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--metaworld-stock", action="store_true",
                    help="Meta-World families on the stock classes (fast=false) instead of metarl's fast step path")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in args.families:
        dist = metarl.envs.make(name, **({"fast": False} if args.metaworld_stock and name.startswith("ml") else {}))
        obs_space, act_space = dist.spaces
        policy = GaussianMLPPolicy(obs_space.shape[0], act_space.shape[0], args.hidden)
        policy.requires_grad_(False)
        tasks = dist.sample(args.tasks, "train", np.random.default_rng(0))
        num_envs = args.tasks * args.episodes
        steps = num_envs * args.max_steps
        fast = not (args.metaworld_stock and name.startswith("ml"))
        # The ratios the sampler is judged by compare rates measured back to back, and report
        # the median over repeats: this VM's speed drifts by tens of percent over a minute,
        # which comparing medians taken minutes apart would fold in. Each sampler rate sits
        # between two measurements of its reference and is compared with their mean, so a
        # drift during the few seconds of one comparison cancels to first order.
        pairs: dict[str, list[float]] = {k: [] for k in ("env_step_only", "process_1", "main_cpu_per_s_process_1",
                                                         "ceiling", "process_2", "main_cpu_per_s_process_2",
                                                         "straggler_loss_process_2")}
        actions = policy_actions(dist, policy, tasks, args.episodes, args.max_steps)
        reference = functools.partial(env_step_only, dist, policy, tasks, min(steps, 10000), actions)
        for _ in range(args.repeats):
            before = reference()
            for k, v in zip(("process_1", "main_cpu_per_s_process_1"),
                            metarl_rate(dist, policy, tasks, args.episodes, "process", 1, args.max_steps)[:2],
                            strict=True):
                pairs[k].append(v)
            after = reference()
            pairs["env_step_only"].append((before + after) / 2)
            # As long as one loop takes for the collection's steps (~1-3 s for pick-place).
            seconds = min(steps, 10000) / pairs["env_step_only"][-1]
            before = ceiling(name, fast, args.hidden, tasks, actions, seconds)
            for k, v in zip(("process_2", "main_cpu_per_s_process_2", "straggler_loss_process_2"),
                            metarl_rate(dist, policy, tasks, args.episodes, "process", 2, args.max_steps), strict=True):
                pairs[k].append(v)
            pairs["ceiling"].append((before + ceiling(name, fast, args.hidden, tasks, actions, seconds)) / 2)
        # Where the rest goes: each env step's own time alone (the env-only loop on the
        # policy's actions; and on uniform ones, for their difference), in a worker that steps
        # one episode at a time (a policy forward between steps: each evicts the other's
        # working set), and in the worker's lockstep of a task's episodes (one forward per
        # lockstep, the envs taking turns in the caches).
        inside: dict[str, list[float]] = {"overhead": [], "lockstep": [], "one_lane": [], "alone": [], "uniform": []}
        for _ in range(args.repeats):
            overhead, inside_step = worker_overhead(dist, policy, tasks, args.episodes, args.max_steps)
            inside["overhead"].append(overhead)
            inside["lockstep"].append(inside_step)
            inside["one_lane"].append(worker_overhead(dist, policy, tasks, args.episodes, args.max_steps, 1)[1])
            inside["alone"].append(1 / reference())
            inside["uniform"].append(1 / env_step_only(dist, policy, tasks, min(steps, 10000)))
        losses = pairs.pop("straggler_loss_process_2")
        row = {"num_envs": num_envs, **{k: float(np.median(v)) for k, v in pairs.items()},
               "worker_overhead": float(np.median(inside["overhead"])),
               "env_step_one_lane_vs_alone": float(np.median(np.divide(inside["one_lane"], inside["alone"]))),
               "env_step_lockstep_vs_one_lane": float(np.median(np.divide(inside["lockstep"], inside["one_lane"]))),
               "env_step_policy_actions_vs_uniform": float(np.median(np.divide(inside["alone"], inside["uniform"]))),
               "plain_loop": plain_loop(dist, policy, tasks[0], min(steps, 3000)),
               "async_vector_env": async_vector(dist, policy, tasks, num_envs, steps),
               "process_1_vs_env_step_only": float(np.median(np.divide(pairs["process_1"], pairs["env_step_only"]))),
               "process_2_vs_ceiling": float(np.median(np.divide(pairs["process_2"], pairs["ceiling"]))),
               # The same without the wait for the slower worker: what a collection's work split
               # (each worker a fixed share) costs when the two CPUs' speeds differ.
               "straggler_loss_process_2": None if None in losses else float(np.median(losses)),
               "process_2_without_wait_vs_ceiling": None if None in losses else float(np.median(
                   np.divide(pairs["process_2"], np.multiply(pairs["ceiling"], np.subtract(1, losses))))),
               "measurements": pairs | {"straggler_loss_process_2": losses}}
        if not args.no_ray:
            try:
                import ray

                row["ray_2"] = metarl_rate(dist, policy, tasks, args.episodes, "ray", 2, args.max_steps,
                                           args.repeats)[0]
                ray.shutdown()
            except ImportError:
                row["ray_2"] = None
        row["process_2_vs_plain"] = row["process_2"] / row["plain_loop"]
        row["process_2_vs_async"] = row["process_2"] / row["async_vector_env"]
        row["overhead_1_worker"] = 1 - row["process_1_vs_env_step_only"]
        if row.get("ray_2"):
            row["ray_2_vs_process_2"] = row["ray_2"] / row["process_2"]
        results[name] = row
    if args.json:
        print(json.dumps(results))
        return
    cols = ["env_step_only", "ceiling", "plain_loop", "async_vector_env", "process_1", "process_2", "ray_2"]
    print(f"env steps/s ({args.tasks} tasks x {args.episodes} episodes x {args.max_steps} steps, "
          f"policy {args.hidden})")
    ratios = ["process_1_vs_env_step_only", "process_2_vs_ceiling", "process_2_vs_plain", "process_2_vs_async"]
    print(f"{'family':<20}" + "".join(f"{c:>17}" for c in cols))
    for name, row in results.items():
        print(f"{name:<20}" + "".join(f"{row[c]:>17.0f}" if row.get(c) else f"{'-':>17}" for c in cols))
        print("  " + ", ".join(f"{k} {row[k]:.2f}" for k in ratios)
              + f"; worker's own time / its envs' time {row['worker_overhead']:.1%}"
              + f"; an env step in a worker, one episode at a time / alone {row['env_step_one_lane_vs_alone']:.2f}"
              + f", in the lockstep / one at a time {row['env_step_lockstep_vs_one_lane']:.2f}"
              + f"; main-process CPU while 2 workers collect: {row['main_cpu_per_s_process_2']:.2f} s/s")
        if row["straggler_loss_process_2"] is not None:
            print(f"  2 workers: {row['straggler_loss_process_2']:.1%} of a collection's wall time waiting for the "
                  f"slower one; without that wait, process_2_vs_ceiling "
                  f"{row['process_2_without_wait_vs_ceiling']:.2f}")


if __name__ == "__main__":
    main()
