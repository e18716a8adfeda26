"""``metarl plot`` on small fake run directories: env-step tick labels, adaptation-curve x axis."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from metarl.plotting import draw_runs, plot_runs, steps_formatter

UNITS = {"maml_trpo": "gradient_steps", "rl2_ppo": "episodes"}


def fake_run(path: Path, algo: str = "maml_trpo", *, iterations: int = 101, steps_per_iter: int = 200_000,
             success: bool = False, adaptation: list[dict] | None = None, seed: int = 0) -> Path:
    """A run directory as ``metarl train`` and ``metarl evaluate`` leave it, with made-up numbers."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"algo:\n  name: {algo}\ntasks:\n  name: nav2d\nseed: {seed}\n")
    with (path / "metrics.jsonl").open("w") as f:
        for i in range(iterations):
            row = {"iteration": i, "env_steps": i * steps_per_iter, "wall_time_s": 2.0 * i,
                   "train/return_pre": -50.0 + i * 0.1 + seed, "train/return_post": -40.0 + i * 0.2 + seed}
            if success:
                row |= {"train/success_pre": 0.1, "train/success_post": min(1.0, i / iterations)}
            f.write(json.dumps(row) + "\n")
    if adaptation is not None:
        (path / "eval.json").write_text(json.dumps({"task_distribution": "nav2d", "split": "test",
                                                    "unit": UNITS[algo], "adaptation": adaptation}))
    return path


def rows(ks: list[int], episodes: list[int] | None, offset: float = 0.0) -> list[dict]:
    return [{"k": k, **({} if episodes is None else {"episodes": e}), "return_mean": -30.0 + 5 * k + offset,
             "return_std": 1.0, "success_rate": None}
            for k, e in zip(ks, episodes or ks, strict=True)]


def visible_tick_labels(fig, ax) -> list[str]:
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    return [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]


def curves(ax) -> dict[str, list[float]]:
    """Legend label -> x data of each adaptation curve (an errorbar container) on ``ax``."""
    return {c.get_label(): [float(x) for x in c.lines[0].get_xdata()] for c in ax.containers}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_steps_formatter_labels():
    label = steps_formatter()
    assert [label(x, 0) for x in (0, 500, 1000, 200_000, 225_000, 1_000_000, 1_500_000, 2_000_000, 20_000_000)] == \
        ["0", "500", "1k", "200k", "225k", "1M", "1.5M", "2M", "20M"]
    assert label(2.5e9, 0) == "2.5B"


def test_env_step_axes_have_short_labels_and_few_ticks(tmp_path):
    # 0 .. 20M env steps in 200k steps: plain integer labels ran into each other here.
    run = fake_run(tmp_path / "run", success=True, adaptation=rows([0, 1, 2], [0, 20, 40]))
    fig = draw_runs([run])
    returns, success, adaptation = fig.axes
    for ax in (returns, success):
        assert ax.get_xlabel() == "environment steps"
        labels = visible_tick_labels(fig, ax)
        assert 3 <= len(labels) <= 7, labels  # MaxNLocator(nbins=6); the default gave 9 here
        assert all(re.fullmatch(r"\d+(\.\d+)?[kM]?", t) for t in labels), labels
        assert "20M" in labels and "0" in labels
        assert ax.xaxis.get_major_formatter()(2_000_000, 0) == "2M"
    assert not any(t.endswith(("k", "M")) for t in visible_tick_labels(fig, adaptation))
    out = plot_runs([run], tmp_path / "plots" / "curves.png")  # the CLI's entry point still writes the PNG
    assert out == tmp_path / "plots" / "curves.png" and out.stat().st_size > 0


def test_adaptation_curves_are_drawn_against_episodes_seen(tmp_path):
    # MAML: 3 gradient steps of 20 episodes each; RL²: one episode per k.
    maml = [fake_run(tmp_path / f"maml{s}", "maml_trpo", iterations=3, seed=s,
                     adaptation=rows([0, 1, 2, 3], [0, 20, 40, 60], offset=s)) for s in (0, 1)]
    rl2 = fake_run(tmp_path / "rl2", "rl2_ppo", iterations=3, adaptation=rows(list(range(10)), list(range(10))))
    fig = draw_runs([*maml, rl2])
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "episodes of the held-out task seen"
    assert curves(ax) == {"maml_trpo / nav2d": [0, 20, 40, 60], "rl2_ppo / nav2d": list(range(10))}
    maml_curve = next(c for c in ax.containers if c.get_label() == "maml_trpo / nav2d")
    assert list(maml_curve.lines[0].get_ydata()) == [-29.5, -24.5, -19.5, -14.5]  # mean over the two seeds


def test_by_run_gives_every_run_its_own_line_named_after_its_directory(tmp_path):
    runs = [fake_run(tmp_path / name, "rl2_ppo", iterations=3, seed=0, adaptation=rows([0, 1], [0, 1], offset=i))
            for i, name in enumerate(("per-episode", "trial-gae"))]
    assert set(curves(draw_runs(runs).axes[-1])) == {"rl2_ppo / nav2d"}  # one config: averaged
    fig = draw_runs(runs, by_run=True)
    assert set(curves(fig.axes[-1])) == {"per-episode", "trial-gae"}
    assert {line.get_label() for line in fig.axes[0].lines} == {
        f"{name} ({tag}-adaptation, 1 run(s))" for name in ("per-episode", "trial-gae") for tag in ("pre", "post")}
    twins = [fake_run(tmp_path / variant / "s0", "rl2_ppo", iterations=3, seed=0, adaptation=rows([0, 1], [0, 1]))
             for variant in ("a", "b")]  # the same directory name: told apart by their paths
    assert set(curves(draw_runs(twins, by_run=True).axes[-1])) == {str(t) for t in twins}


def test_adaptation_curves_fall_back_to_k_and_name_the_units(tmp_path):
    old = fake_run(tmp_path / "maml", "maml_trpo", iterations=3, adaptation=rows([0, 1, 2], None))
    fig = draw_runs([old])
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "adaptation k (gradient steps)"
    assert curves(ax) == {"maml_trpo / nav2d": [0, 1, 2]}
    # Different units and one run without "episodes": k on the axis, each unit in the legend.
    rl2 = fake_run(tmp_path / "rl2", "rl2_ppo", iterations=3, adaptation=rows([0, 1, 2, 3], [0, 1, 2, 3]))
    fig = draw_runs([old, rl2])
    ax = fig.axes[-1]
    assert ax.get_xlabel() == "adaptation k (unit in the legend)"
    assert curves(ax) == {"maml_trpo / nav2d (k in gradient steps)": [0, 1, 2],
                          "rl2_ppo / nav2d (k in episodes)": [0, 1, 2, 3]}
    assert {t.get_text() for t in ax.get_legend().get_texts()} == set(curves(ax))
