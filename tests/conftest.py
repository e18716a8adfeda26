import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from unittest import mock

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_process():
    """Run the console entry point in a fresh interpreter (``python -m metarl.cli``): what
    the in-process ``cli`` cannot show, such as an import that only an earlier test made."""
    def run(args: list[str]) -> CliResult:
        proc = subprocess.run([sys.executable, "-m", "metarl.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=600)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def _warn_on_stderr(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` as a console run's: to stderr (``file`` is never given here)."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.fixture
def cli(capfd):
    """Run ``metarl.cli.main`` in this process, as the console script does, with the output
    captured at the file descriptors (the sampler's worker processes' included). A fresh
    interpreter would take 3-5 s to import torch and metarl, and the suite calls the CLI
    dozens of times; ``cli_process`` starts one, and the tests about the process itself
    (Ctrl-C, SIGKILL) start their own. As on a console, the run's logged warnings and
    Python warnings reach its stderr; what it sets in ``os.environ`` or on the root logger
    is undone after it. A bug still raises here with its traceback; argparse's exits
    become the code."""
    from metarl.cli import main

    def run(args: list[str]) -> CliResult:
        capfd.readouterr()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        # main()'s logging.basicConfig does nothing under pytest, whose handlers the root
        # logger already has: give the run's warnings the stderr a console would show them on.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
        with mock.patch.dict(os.environ), warnings.catch_warnings():
            warnings.resetwarnings()  # Python's own filters, not pytest's recorder
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _warn_on_stderr
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # as the interpreter would: a message is printed, status 1
                if exit_.code is not None and not isinstance(exit_.code, int):
                    print(exit_.code, file=sys.stderr)
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            finally:
                root.handlers[:] = handlers
                root.setLevel(level)
                handler.close()
        out = capfd.readouterr()
        return CliResult(code, out.out, out.err)

    return run


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
