"""Learning checks (minutes each): `make test-slow`, not in the default run."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["maml_trpo", "promp", "rl2_ppo", "varibad"])
def test_learns_nav2d(tmp_path, algo):
    from learn_nav2d import ITERATIONS, run

    out = run(algo, ITERATIONS[algo], tmp_path / "run")
    assert out["passed"], out


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="~1.5 h on 2 CPU cores: run scripts/learn_pearl.py, which resumes across sessions")
def test_pearl_beats_maml_trpo_on_halfcheetah_vel_at_250k_env_steps(tmp_path):
    from learn_pearl import ENV_STEPS, run

    out = run(tmp_path / "run", ENV_STEPS, device="cuda")
    assert out["env_steps"] <= ENV_STEPS and out["passed"], out
