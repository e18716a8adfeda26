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


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test, whatever this process inherited: a shell
    starts background jobs with SIGINT ignored, and CI may run the suite as one."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def with_default_sigint():
    """``preexec_fn`` for a child that must see Ctrl-C as a terminal's child would."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
