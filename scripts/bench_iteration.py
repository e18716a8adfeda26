"""Time whole meta-iterations at the Meta-World ML1 pick-place config shapes.

Each algorithm runs ``--iterations`` real iterations of ``<algo>/ml1_pick_place`` (fresh
workers, real envs, real updates) and reports, per iteration, the seconds spent sampling
and updating, env steps per second while sampling, the main process's CPU seconds
while the workers collect (it should sleep), and its resident memory after the iteration.
The first update of a process faults in its memory; later ones reuse it
(:func:`metarl.trainer.retain_freed_memory`), so ``--iterations 2`` shows both.

    python scripts/bench_iteration.py                                  # maml_trpo and rl2_ppo
    python scripts/bench_iteration.py --algos maml_trpo --set algo.hvp_subsample=0.1
    python scripts/bench_iteration.py --json
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def _usage() -> tuple[float, float, int]:
    """This process's CPU seconds, system seconds and minor page faults so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_minflt


def _rss_gb() -> float:
    """This process's resident memory now (Linux), GB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e9


def bench(algo: str, iterations: int, sets: list[str]) -> dict:
    from metarl.config import load_config
    from metarl.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(f"{algo}/ml1_pick_place", ["logger.wandb=false", f"run_dir={Path(tmp) / 'run'}",
                                                     *sets])
        trainer = Trainer(cfg)
        sampler = trainer.make_sampler()
        collect, sampling = sampler.collect, [0.0, 0.0, 0]

        def timed_collect(*a, **kw):  # the main process's CPU use while workers collect
            u0 = _usage()
            try:
                return collect(*a, **kw)
            finally:
                sampling[:] = [x + b - a for x, a, b in zip(sampling, u0, _usage(), strict=True)]

        sampler.collect = timed_collect
        rows = []
        try:
            for i in range(iterations):
                t0, u0, sampling[:] = time.perf_counter(), _usage(), [0.0, 0.0, 0]
                metrics = trainer.train_step(i, sampler)
                # Outside sampling (the update, mostly): system seconds and page faults, which
                # a process pays while it first touches its memory.
                _, sys_s, faults = (b - a - x for x, a, b in zip(sampling, u0, _usage(), strict=True))
                rows.append({"sample_s": metrics["time/sample_s"], "update_s": metrics["time/update_s"],
                             "update_over_sample": metrics["time/update_s"] / metrics["time/sample_s"],
                             "env_steps_per_s": metrics["time/env_steps_per_s"],
                             "iteration_s": time.perf_counter() - t0, "main_cpu_while_sampling_s": sampling[0],
                             "main_system_s_outside_sampling": sys_s, "main_page_faults_outside_sampling": faults,
                             "main_rss_gb": _rss_gb()})
        finally:
            sampler.close()
    return {"algo": algo, "config": f"{algo}/ml1_pick_place", "overrides": sets,
            "meta_batch_size": cfg.meta_batch_size, "episodes_per_task": cfg.episodes_per_task,
            "workers": sampler.num_workers, "iterations": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algos", nargs="+", default=["maml_trpo", "rl2_ppo"])
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override, repeatable")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [bench(algo, args.iterations, args.sets) for algo in args.algos]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        print(f"{r['config']} {' '.join(r['overrides'])}: {r['meta_batch_size']} tasks x "
              f"{r['episodes_per_task']} episodes, {r['workers']} workers")
        for i, row in enumerate(r["iterations"]):
            print(f"  iteration {i}: sampling {row['sample_s']:6.1f} s ({row['env_steps_per_s']:,.0f} env steps/s), "
                  f"update {row['update_s']:6.1f} s, update/sampling {row['update_s'] / row['sample_s']:.2f}, "
                  f"main-process CPU while sampling {row['main_cpu_while_sampling_s']:.1f} s, "
                  f"main-process memory {row['main_rss_gb']:.1f} GB, outside sampling "
                  f"{row['main_system_s_outside_sampling']:.1f} s system time and "
                  f"{row['main_page_faults_outside_sampling']:,} page faults")


if __name__ == "__main__":
    main()
