"""Learning checks (minutes each): `make test-slow`, not in the default run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


@pytest.mark.slow
def test_maml_trpo_learns_nav2d(tmp_path):
    from learn_maml_nav2d import run

    out = run(iterations=40, run_dir=tmp_path / "run")
    assert out["curve"][1] >= -20, out
    assert out["curve"][1] - out["curve"][0] >= 8, out


@pytest.mark.slow
def test_rl2_second_episode_beats_first_on_nav2d(tmp_path):
    from learn_rl2_nav2d import run

    out = run(iterations=200, run_dir=tmp_path / "run")
    assert out["curve"][1] - out["curve"][0] >= 2.0, out
