"""Learning checks (minutes each): `make test-slow`, not in the default run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["maml_trpo", "promp", "rl2_ppo", "varibad"])
def test_learns_nav2d(tmp_path, algo):
    from learn_nav2d import ITERATIONS, run

    out = run(algo, ITERATIONS[algo], tmp_path / "run")
    assert out["passed"], out
