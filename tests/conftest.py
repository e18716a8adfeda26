import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], cwd: Path | None = None, timeout: int = 600) -> CliResult:
    """Run the real entry point in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "metarl.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli
