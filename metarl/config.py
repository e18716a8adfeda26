"""Typed run configuration: frozen dataclasses are the schema.

This module holds the run-level schema; each algorithm's hyper-parameters are a dataclass
beside its learner, found through the registry (:func:`metarl.algos.algorithm`).
``configs/*.yaml`` are plain data loaded strictly onto the schema (an unknown key fails
and lists the valid ones), then dotted ``key=value`` overrides from the command line.
OmegaConf checks and converts types; ``__post_init__`` checks ranges. No interpolation,
no ``_target_``, no code in strings.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metarl.algos import AlgoConfig, MamlConfig, algorithm, check_positive
from metarl.errors import ConfigError


def _config_dir() -> Path:
    """configs/ of the checkout (editable install), else the copy a wheel installs."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    return checkout if checkout.is_dir() else here / "configs"


CONFIG_DIR = _config_dir()
DEFAULT_CONFIG = "default"


@dataclass(frozen=True)
class TasksConfig:
    name: str = "nav2d"
    """A task distribution name (``metarl tasks`` lists them)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the distribution (pool sizes, benchmark seed, ``fast``, ...)."""


@dataclass(frozen=True)
class PolicyConfig:
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    """``tanh`` or ``relu``."""
    init_std: float = 1.0
    std_type: str = "param"
    """``param``: state-independent log-std; ``head``: state-dependent (an output head)."""
    min_std: float = 1e-6

    def __post_init__(self) -> None:
        if self.activation not in ("tanh", "relu"):
            raise ConfigError(f"policy.activation must be 'tanh' or 'relu', got {self.activation!r}")
        if self.std_type not in ("param", "head"):
            raise ConfigError(f"policy.std_type must be 'param' or 'head', got {self.std_type!r}")
        if any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"policy.hidden_sizes must be positive sizes, got {self.hidden_sizes}")
        check_positive("policy.init_std", self.init_std)


@dataclass(frozen=True)
class SamplerConfig:
    backend: str = "process"
    """``local`` (in process), ``process`` (worker processes) or ``ray``."""
    num_workers: int = 0
    """Worker processes or Ray actors; 0 means one per CPU core."""
    ray_address: str | None = None
    """``ray.init(address=...)``; None starts a local Ray instance."""
    max_retries: int = 3
    """Restarts of a dead worker within one collection before giving up."""
    max_lanes: int = 16
    """Most episodes a worker steps in lockstep, one env each (a task with more episodes
    still gets one lane per episode). More lanes spread the policy's per-step cost over more
    env steps, but each lane holds an env (a Meta-World env ~20 MB), and on Meta-World 60
    lanes per worker ran no faster than 10: the envs' cache misses cost what the lockstep
    saves. 16 keeps one task per lockstep at 10 episodes per task."""

    def __post_init__(self) -> None:
        if self.backend not in ("local", "process", "ray"):
            raise ConfigError(f"sampler.backend must be one of local, process, ray; got {self.backend!r}")
        if self.num_workers < 0:
            raise ConfigError(f"sampler.num_workers must be >= 0, got {self.num_workers}")
        if self.max_lanes < 1:
            raise ConfigError(f"sampler.max_lanes must be >= 1, got {self.max_lanes}")


@dataclass(frozen=True)
class LoggerConfig:
    wandb: bool = True
    """Log to Weights & Biases: online when logged in (WANDB_API_KEY or netrc), offline
    otherwise (``wandb sync`` later); ``false`` turns it off."""
    project: str = "metarl"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None
    video_every: int = 0
    """Record an adapted rollout on a test task to MP4 every N iterations (0: never)."""

    def __post_init__(self) -> None:
        if self.video_every < 0:
            raise ConfigError(f"logger.video_every must be >= 0 (0: never), got {self.video_every}")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0
    """Evaluate on the test split every N iterations (0: only at the end)."""
    num_tasks: int = 10
    adapt_steps: int = 1
    """Adaptation steps K for the final evaluation (returns after k = 0..K)."""
    deterministic: bool | None = None
    """Held-out episodes act with the policy's mean (true) or sample (false); unset, as the
    learner's reference evaluates (PEARL, VariBAD, SB3 the mean; MAML, ProMP, RL² sample)."""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"eval.every must be >= 0 (0: only at the end), got {self.every}")
        if self.num_tasks < 1:
            raise ConfigError(f"eval.num_tasks must be >= 1, got {self.num_tasks}")
        if self.adapt_steps < 0:
            raise ConfigError(f"eval.adapt_steps must be >= 0, got {self.adapt_steps}")


@dataclass(frozen=True)
class RunConfig:
    """One training run. Every key can be overridden as ``key=value`` on the command line."""

    algo: AlgoConfig = field(default_factory=MamlConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    iterations: int = 100
    """Meta-iterations (outer updates)."""
    max_env_steps: int | None = None
    """Env-step budget: training stops after the iteration that reaches it (None: run all
    ``iterations``). Benchmarks set budgets this way (Meta-World+: ML1 2M, ML10 20M)."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration."""
    episodes_per_task: int = 20
    """Episodes collected per task before and after each adaptation step."""
    max_episode_steps: int | None = None
    """Episode length; None uses the task distribution's horizon."""
    seed: int = 0
    device: str = "cpu"
    """Where the learner runs: ``cpu`` or ``cuda`` (rollouts always run on CPU)."""
    run_dir: str | None = None
    """Where the run's files go; None means ``runs/<algo>-<tasks>-s<seed>-<time>``."""
    resume: bool = False
    """Continue the run in ``run_dir`` from its latest checkpoint."""
    checkpoint_every: int = 10
    checkpoint_keep: int = 3
    """How many ``checkpoints/iter_*.pt`` to keep besides ``latest.pt``."""

    def __post_init__(self) -> None:
        for key in ("iterations", "meta_batch_size", "episodes_per_task", "checkpoint_every",
                    "checkpoint_keep"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_env_steps is not None and self.max_env_steps < 1:
            raise ConfigError(f"max_env_steps must be >= 1 or null, got {self.max_env_steps}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be >= 1 or null, got {self.max_episode_steps}")
        if self.resume and not self.run_dir:
            raise ConfigError("resume=true needs run_dir=<the run's directory>")
        if self.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")


# ----------------------------------------------------------------------------- loading


def resolve_config_path(name_or_path: str | None) -> Path:
    """A config name under configs/ (``maml_trpo/nav2d``) or a path to a YAML file."""
    name = name_or_path or DEFAULT_CONFIG
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    valid = ", ".join(available_configs())
    raise ConfigError(f"unknown config {name!r}: neither a YAML file nor a name under "
                      f"{CONFIG_DIR}; valid names: {valid}")


def available_configs() -> list[str]:
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["algo.inner_lr=0.05", "seed=3"]`` -> nested dict with YAML-typed values."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
            raise ConfigError(f"invalid override {item!r}: expected dotted key=value, "
                              "e.g. algo.inner_lr=0.05 or seed=3")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"invalid override {item!r}: {part!r} is not a section")
        node[last] = value
    return nested


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML config, apply overrides, validate; raise ConfigError with one clear line."""
    return build_config(deep_merge(read_config_file(resolve_config_path(name_or_path)), parse_overrides(overrides)))


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML config file's mapping (empty for an empty file); ConfigError if it is not one."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def build_config(data: Mapping[str, Any]) -> RunConfig:
    """Nested plain data -> validated RunConfig."""
    algo = data.get("algo") or {}
    if not isinstance(algo, Mapping):  # before the algorithm's name is read from it
        raise ConfigError(f"config key 'algo' is a section; give it a mapping, not {algo!r} "
                          f"(an algorithm by name: algo.name={algo})")
    algo_name = algo.get("name", AlgoConfig.name)
    algo_cls = algorithm(algo_name).config
    _check_keys(data, RunConfig, "", {"algo": algo_cls})
    schema = OmegaConf.structured(RunConfig(algo=algo_cls(name=algo_name)))
    OmegaConf.set_readonly(schema, False)
    try:
        merged = OmegaConf.merge(schema, data)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        raise ConfigError(f"invalid value for {key}: {msg}" if key else msg) from None


def _check_keys(data: Mapping[str, Any], cls: type, prefix: str,
                substitutes: Mapping[str, type]) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            where = f"under '{prefix.rstrip('.')}'" if prefix else "at the top level"
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys {where}: "
                              f"{', '.join(fields)}")
        sub = substitutes.get(key) or _dataclass_type(fields[key])
        if sub is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{prefix}{key}' is a section; give it a mapping, "
                                  f"not {value!r}")
            _check_keys(value, sub, f"{prefix}{key}.", {})


def _dataclass_type(f: dataclasses.Field) -> type | None:
    factory = f.default_factory
    if factory is not dataclasses.MISSING:
        made = factory()
        if dataclasses.is_dataclass(made):
            return type(made)
    return None


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (what ``config.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: Path) -> None:
    from metarl.checkpoint import write_text

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


RESUME_MAY_CHANGE = ("run_dir", "resume", "iterations", "max_env_steps", "device", "checkpoint_every",
                     "checkpoint_keep", "sampler.", "logger.", "eval.")
"""What a resumed run may set differently from its checkpoint: where and how long it runs,
where the learner and the rollouts run (the sampler's batch is the same on every backend),
what it logs and evaluates. Anything else would change what the run has trained on."""


def resume_changes(saved: Mapping[str, Any], cfg: RunConfig) -> list[str]:
    """``"key: saved -> new"`` for each setting ``cfg`` changes that a resumed run must keep.
    Sections (the config's dataclasses) are compared key by key, any other value whole (a
    ``tasks.options`` entry added or dropped is a change); keys the saved config lacks (from
    older code) are not compared."""
    changes: list[str] = []

    def walk(old: Mapping[str, Any], new: Any, prefix: str) -> None:
        for f in dataclasses.fields(new):
            key, value = prefix + f.name, getattr(new, f.name)
            if f.name not in old or any(key == p or (p.endswith(".") and key.startswith(p))
                                        for p in RESUME_MAY_CHANGE):
                continue
            if dataclasses.is_dataclass(value) and isinstance(old[f.name], Mapping):
                walk(old[f.name], value, key + ".")
            elif _plain(old[f.name]) != _plain(value):
                changes.append(f"{key}: {_plain(old[f.name])!r} -> {_plain(value)!r}")

    walk(saved, cfg, "")
    return changes


def saved_with_versioned_options(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with each versioned option it lacks (it was saved before the
    option existed) set to what the run ran with (``envs.registry.VERSIONED_OPTIONS``)."""
    from metarl.envs.registry import VERSIONED_OPTIONS

    tasks = dict(saved.get("tasks") or {})
    old = VERSIONED_OPTIONS.get(tasks.get("name", ""), {})
    return {**saved, "tasks": {**tasks, "options": {**old, **(tasks.get("options") or {})}}} if old else dict(saved)


def with_versioned_options(cfg: RunConfig, saved: Mapping[str, Any] | None = None) -> RunConfig:
    """``cfg`` with each versioned option of its task family written out: as ``saved`` (the
    run's checkpoint config, through :func:`saved_with_versioned_options`) has it when the
    run is resumed or evaluated, else the family's current default, so the run records it."""
    from metarl.envs import make
    from metarl.envs.registry import VERSIONED_OPTIONS

    keys = [k for k in VERSIONED_OPTIONS.get(cfg.tasks.name, {}) if k not in cfg.tasks.options]
    if not keys:
        return cfg
    if saved is not None and saved["tasks"]["name"] == cfg.tasks.name:  # another family: resuming says so
        values = {k: saved["tasks"]["options"][k] for k in keys}
    else:
        try:
            dist = make(cfg.tasks.name, **cfg.tasks.options)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        values = {k: getattr(dist, k) for k in keys}
    return dataclasses.replace(cfg, tasks=dataclasses.replace(cfg.tasks, options={**cfg.tasks.options, **values}))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: a checkpoint keeps the tuples a YAML file makes lists."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
