"""Learning checks (minutes each): `make test-slow`, not in the default run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


@pytest.mark.slow
@pytest.mark.parametrize("algo, iterations", [("maml_trpo", 40), ("rl2_ppo", 450)])
def test_learns_nav2d(tmp_path, algo, iterations):
    from learn_nav2d import run

    out = run(algo, iterations, tmp_path / "run")
    assert out["passed"], out
