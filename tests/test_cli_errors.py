"""Which errors the CLI reports in one line (the user's to fix) and which keep their
traceback (bugs): a missing optional extra is the first kind, any other ImportError the
second. In process, through ``metarl.cli.main``, with the import made to fail."""

import logging
import sys

import pytest

import metarl.trainer
from metarl import cli, video
from metarl.extras import MissingExtraError, require

TINY = ["iterations=1", "meta_batch_size=2", "episodes_per_task=1", "max_episode_steps=5",
        "policy.hidden_sizes=[4]", "eval.num_tasks=1", "eval.adapt_steps=1", "logger.wandb=false"]


def _uninstall(monkeypatch, package):
    """Make ``import package`` (and its submodules) fail as if it were not installed."""
    for name in [m for m in sys.modules if m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


def _one_line(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path):
    _uninstall(monkeypatch, "ray")
    code = cli.main(["train", "maml_trpo/nav2d", *TINY, "sampler.backend=ray", f"run_dir={tmp_path}"])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"run directory: {tmp_path}",  # said before training starts the sampler
                     "metarl: error: sampler.backend=ray needs ray, which is not installed: "
                     "pip install 'metarl[ray]'"], lines


@pytest.fixture
def no_highway(monkeypatch):
    from metarl.envs import driving

    _uninstall(monkeypatch, "highway_env")
    driving._parking_env_class.cache_clear()
    yield
    driving._parking_env_class.cache_clear()


def test_missing_highway_is_one_line_naming_the_extra(no_highway, capsys, tmp_path):
    code = cli.main(["train", "maml_trpo/nav2d", *TINY, "tasks.name=highway-parking", "sampler.backend=local",
                     f"run_dir={tmp_path}"])
    assert code == 2
    line = _one_line(capsys)
    assert line.startswith("metarl: error: highway-parking needs highway_env")
    assert "pip install 'metarl[highway]'" in line


def test_tasks_lists_a_family_whose_extra_is_missing_as_unavailable(no_highway, capsys):
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out.splitlines()
    parking = next(line for line in out if line.startswith("highway-parking "))
    assert "unavailable" in parking and "pip install 'metarl[highway]'" in parking
    assert any(line.startswith("nav2d ") and "unavailable" not in line for line in out)


def test_an_import_error_inside_the_library_keeps_its_traceback(monkeypatch, tmp_path):
    """A bug (here: a bad import simulated in the trainer) is not reported as a user
    error: main() re-raises it, so the traceback is printed."""

    def broken(cfg, *_):
        raise ImportError("cannot import name 'gae' from 'metarl.optim'")

    monkeypatch.setattr(metarl.trainer, "build", broken)
    with pytest.raises(ImportError, match="cannot import name 'gae'"):
        cli.main(["train", "maml_trpo/nav2d", *TINY, "sampler.backend=local", f"run_dir={tmp_path}"])


def test_require_blames_the_extra_only_when_its_package_is_absent(monkeypatch, tmp_path):
    _uninstall(monkeypatch, "ray")
    with pytest.raises(MissingExtraError, match=r"sampler.backend=ray needs ray, .*metarl\[ray\]") as err:
        require("ray", "ray", "sampler.backend=ray")
    assert err.value.extra == "ray" and err.value.name == "ray"
    # installed, but broken inside: its own error, not a missing extra
    (tmp_path / "brokenextra").mkdir()
    (tmp_path / "brokenextra" / "__init__.py").write_text("import a_module_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as err:
        require("brokenextra", "ray", "something")
    assert not isinstance(err.value, MissingExtraError) and err.value.name == "a_module_that_is_not_there"
    # a submodule missing from an installed package: not a missing extra either
    with pytest.raises(ModuleNotFoundError) as err:
        require("metarl.no_such_module", "ray", "something")
    assert not isinstance(err.value, MissingExtraError)


def test_missing_imageio_skips_videos_with_a_line_naming_the_extra(monkeypatch, caplog, tmp_path):
    import metarl.envs
    from metarl.policies import GaussianMLPPolicy

    _uninstall(monkeypatch, "imageio")
    monkeypatch.setattr(video, "_warned", False)
    dist = metarl.envs.make("nav2d")
    policy = GaussianMLPPolicy(2, 2, [4])
    with caplog.at_level(logging.WARNING, logger=video.__name__):
        out = video.record_episode(dist, dist.tasks("test")[0], policy.spec, policy.params(),
                                   tmp_path / "v.mp4", max_steps=3)
    assert out is None and not (tmp_path / "v.mp4").exists()
    assert "pip install 'metarl[video]'" in caplog.text


def test_cuda_without_a_device_is_one_line(monkeypatch, capsys, tmp_path):
    """On every machine, with or without a GPU: the check sees no CUDA device here."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = cli.main(["train", *TINY, "device=cuda", f"run_dir={tmp_path}"])
    assert code == 2
    assert "device=cuda but no CUDA device is available" in _one_line(capsys)
