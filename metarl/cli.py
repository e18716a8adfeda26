"""``metarl train | evaluate | plot | tasks``."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from metarl.checkpoint import CheckpointError
from metarl.config import ConfigError
from metarl.extras import MissingExtraError

# Errors that are the user's to fix: reported in one line, without a traceback. Of the
# ImportErrors only a missing optional extra is one; any other keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, CheckpointError, MissingExtraError)


def _tasks(_: argparse.Namespace) -> int:
    import metarl.envs

    print(f"{'name':<38} {'train':>6} {'test':>6} {'obs':>4} {'act':>4} {'horizon':>7}")
    for name in metarl.envs.names():
        try:
            d = metarl.envs.make(name).describe()
        except MissingExtraError as err:
            print(f"{name:<38} unavailable: {err}")
            continue
        print(f"{d['name']:<38} {d['train']:>6} {d['test']:>6} {d['obs_dim']:>4} {d['act_dim']:>4} "
              f"{d['horizon']:>7}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from metarl.config import load_config, parse_overrides
    from metarl.rundir import RunDir

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # `metarl train seed=3`: no config name given
        config, overrides = None, [config, *overrides]
    given = parse_overrides(overrides)
    if config is None and given.get("resume") is True and given.get("run_dir"):
        # `metarl train run_dir=R resume=true`: the run's own config
        saved = RunDir(Path(str(given["run_dir"]))).config
        if not saved.is_file():
            raise ConfigError(f"{given['run_dir']} is not a run directory (no config.yaml) to resume; "
                              "name the run's config to start it there")
        config = str(saved)
    seeds = [o for o in overrides if o.startswith("seed=") and "," in o]
    if not seeds:
        return _train_one(load_config(config, overrides))
    # `seed=0,1,2`: one run per seed, one after another, into sibling run directories.
    rest = [o for o in overrides if o not in seeds]
    try:
        values = [int(v) for v in seeds[-1].removeprefix("seed=").split(",")]
    except ValueError:
        raise ConfigError(f"invalid override {seeds[-1]!r}: expected seed=N or seed=N,M,...") from None
    run_dir = next((o.removeprefix("run_dir=") for o in rest if o.startswith("run_dir=")), None)
    cfgs = [load_config(config, [o for o in rest if not o.startswith("run_dir=")] + [f"seed={v}"]
                        + ([f"run_dir={run_dir}-s{v}"] if run_dir else []))
            for v in values]  # validate every run before starting the first
    for i, cfg in enumerate(cfgs):
        try:
            _train_one(cfg)
        except KeyboardInterrupt as stop:
            from metarl.trainer import RunStopped

            if not isinstance(stop, RunStopped) or i + 1 == len(cfgs):
                raise
            left = values[i + 1:]
            others = [o for o in rest if not o.startswith(("run_dir=", "resume="))]
            if len(left) == 1:  # one seed: no sweep, so its own directory is named
                others += [f"seed={left[0]}", *([f"run_dir={run_dir}-s{left[0]}"] if run_dir else [])]
            else:
                others += [f"seed={','.join(map(str, left))}", *([f"run_dir={run_dir}"] if run_dir else [])]
            command = shlex.join(["metarl", "train", *([config] if config else []), *others])
            raise KeyboardInterrupt(f"{stop}; `{command}` runs the seeds not started") from None
    return 0


def _train_one(cfg) -> int:
    if cfg.logger.video_every and not os.environ.get("DISPLAY"):
        # Headless MuJoCo rendering; must be chosen before mujoco is first imported.
        os.environ.setdefault("MUJOCO_GL", "egl")
    from metarl.trainer import Trainer, format_table

    trainer = Trainer(cfg)
    print(f"run directory: {trainer.run_dir}", file=sys.stderr)
    result = trainer.run()
    print(f"\n{cfg.algo.name} on {trainer.dist.name} (seed {cfg.seed}): adaptation on "
          f"{len(result['per_task'])} held-out (test) tasks")
    print(format_table(result))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from metarl.envs.metaworld import MetaWorld
    from metarl.trainer import format_table, load_run

    if args.tasks is not None and args.tasks < 1:
        raise ConfigError(f"--tasks must be >= 1, got {args.tasks}")
    if args.adapt_steps is not None and args.adapt_steps < 0:
        raise ConfigError(f"--adapt-steps must be >= 0, got {args.adapt_steps}")
    cfg, trainer = load_run(Path(args.run_dir))
    # Unset: what the run's final evaluation used, so eval.json re-checks what training wrote.
    tasks = cfg.eval.num_tasks if args.tasks is None else args.tasks
    adapt_steps = cfg.eval.adapt_steps if args.adapt_steps is None else args.adapt_steps
    seed = cfg.seed if args.seed is None else args.seed
    if args.protocol == "metaworld":
        from metarl.metaworld_protocol import protocol_settings, run_protocol

        dist = trainer.dist
        if not isinstance(dist, MetaWorld):
            raise ConfigError(f"--protocol metaworld needs a Meta-World run; this one is on {dist.name}")
        settings = protocol_settings(dist.benchmark, len(dist.classes("test")), args.meta_batch_size,
                                     args.goals_per_class, args.num_evals,
                                     args.evaluation_start, adaptation_episodes=args.adaptation_episodes,
                                     evaluation_episodes=args.evaluation_episodes)
        protocol = run_protocol(trainer.learner, dist, settings, args.protocol_seed, args.max_episode_steps,
                                cfg.sampler.num_workers) | {"env_steps": trainer.env_steps}
    else:
        protocol = _kept_protocol(trainer.paths.eval, trainer.env_steps)
    sampler = trainer.make_sampler()
    try:
        result = trainer.evaluate(sampler, tasks, adapt_steps, seed, args.split,
                                  extra={"metaworld_protocol": protocol} if protocol else None,
                                  deterministic=None if args.actions is None else args.actions == "mean")
    finally:
        sampler.close()
    print(format_table(result))
    if protocol:
        print(f"Meta-World protocol{' (kept from eval.json)' if args.protocol != 'metaworld' else ''}: success "
              f"rate {protocol['success_rate']:.3f}, return {protocol['return']:.1f} ({protocol['settings']})")
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from metarl.benchmark import load_suite, run_suite

    suite = load_suite(args.suite)
    if args.summary_only:
        from metarl.benchmark import write_summary

        write_summary(suite, Path(args.results))
    else:
        run_suite(suite, Path(args.results), args.overrides, args.only, args.seed_major)
    print(f"wrote {Path(args.results) / (suite.name + '.json')} and {Path(args.results) / 'README.md'}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from metarl.plotting import plot_runs

    out = plot_runs([Path(p) for p in args.run_dirs], Path(args.out), args.by_run)
    print(f"wrote {out}")
    return 0


def _kept_protocol(eval_path: Path, env_steps: int) -> dict | None:
    """The Meta-World protocol numbers eval.json holds where they are this checkpoint's, so a
    re-evaluation without ``--protocol`` does not erase minutes of protocol rollouts: those
    recorded at its ``env_steps``, and those written before the entry recorded them (by
    ``metarl benchmark`` on a finished run, or ``evaluate --protocol``; a resumed run's final
    evaluation rewrites eval.json without them)."""
    import json

    try:
        kept = json.loads(eval_path.read_text()).get("metaworld_protocol")
    except (OSError, ValueError, AttributeError):  # none yet, or not an eval.json: nothing to keep
        return None
    if kept is None or kept.get("env_steps", env_steps) != env_steps:
        return None
    return kept


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metarl", description="Meta-reinforcement learning for robot control.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a meta-policy")
    t.add_argument("config", nargs="?", default=None,
                   help="config name under configs/ (e.g. maml_trpo/nav2d) or a YAML path; "
                        "default: the small default experiment, or with run_dir=R resume=true, "
                        "R's own config.yaml")
    t.add_argument("overrides", nargs="*",
                   help="dotted key=value overrides, e.g. algo.inner_lr=0.05; seed=0,1,2 runs "
                        "one run per seed into sibling run directories")
    t.set_defaults(func=_train)
    e = sub.add_parser("evaluate", help="adaptation curve of a trained run on held-out tasks")
    e.add_argument("run_dir")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--adapt-steps", type=int, default=None,
                   help="adaptation rounds K, evaluated after 0..K of them (default: the run's "
                        "eval.adapt_steps, as training's final evaluation)")
    e.add_argument("--tasks", type=int, default=None, help="number of tasks (default: the run's eval.num_tasks)")
    e.add_argument("--seed", type=int, default=None, help="task and episode seed (default: the run's seed)")
    e.add_argument("--actions", choices=["mean", "sample"], default=None,
                   help="act with the policy's mean or sample (default: the run's eval.deterministic, "
                        "unset: as the learner's reference evaluates)")
    e.add_argument("--protocol-seed", type=int, default=0,
                   help="seed of the Meta-World protocol's adaptation episodes (default 0, as metarl benchmark)")
    e.add_argument("--protocol", choices=["adaptation", "metaworld"], default="adaptation",
                   help="metaworld: also run metaworld.evaluation.metalearning_evaluation and "
                        "record its numbers in eval.json")
    proto = "Meta-World protocol (default: Meta-World+'s setting for the benchmark)"
    e.add_argument("--meta-batch-size", type=int, default=None,
                   help=f"{proto}: envs of the test vector env (ML1 10, ML10 20, ML45 45)")
    e.add_argument("--goals-per-class", type=int, default=None,
                   help=f"{proto}: test goals used per test class (ML1 50, ML10 40, ML45 45)")
    e.add_argument("--num-evals", type=int, default=None,
                   help=f"{proto}: rounds (default: every goal once)")
    e.add_argument("--adaptation-episodes", type=int, default=None, help=f"{proto}: 10")
    e.add_argument("--evaluation-episodes", type=int, default=None, help=f"{proto}: 3")
    e.add_argument("--evaluation-start", choices=["adapted", "continued"], default="adapted",
                   help=f"{proto}: where RL²'s and VariBAD's evaluation episodes start: each from the state "
                        "the adaptation episodes left (default; garage's and metaworld-algorithms' RL² "
                        "agents) or from where the previous one ended (metarl before 2026-12-07)")
    e.add_argument("--max-episode-steps", type=int, default=None, help="shorten episodes (tests only)")
    e.set_defaults(func=_evaluate)
    b = sub.add_parser("benchmark", help="train, evaluate and tabulate a suite of runs (resumable)")
    b.add_argument("suite", help="a suite name under benchmarks/ (e.g. metaworld_ml1) or a YAML path")
    b.add_argument("overrides", nargs="*",
                   help="key=value overrides for every run, for how to run (sampler.num_workers=2, "
                        "logger.wandb=false), not what to run")
    b.add_argument("--results", default="results/metaworld", help="where run directories and the table go")
    b.add_argument("--only", action="append", default=[], help="work on this run name only (repeatable)")
    b.add_argument("--summary-only", action="store_true", help="rewrite the table and plot, train nothing")
    b.add_argument("--seed-major", action="store_true",
                   help="every run's first seed before any second seed (one seed of each row early)")
    b.set_defaults(func=_benchmark)
    pl = sub.add_parser("plot", help="learning curves (and adaptation curves) to a PNG")
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument("--out", required=True)
    pl.add_argument("--by-run", action="store_true",
                    help="one line per run directory, named after it (default: runs of one config averaged)")
    pl.set_defaults(func=_plot)
    ts = sub.add_parser("tasks", help="list task distributions with split sizes")
    ts.set_defaults(func=_tasks)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:  # key=value overrides after a flag (`metarl benchmark S --seed-major seed=1`)
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            p.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        return args.func(args)
    except USER_ERRORS as err:
        # Config and checkpoint errors, a missing extra: one line, no traceback.
        print(f"metarl: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # a RunStopped says where the run stopped and how it continues
        print(f"metarl: {stop}" if str(stop) else "metarl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
