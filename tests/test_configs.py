"""Every shipped config loads onto the schema and names a real task distribution."""

import pytest

import metarl.envs
from metarl.config import available_configs, load_config


@pytest.mark.parametrize("name", available_configs())
def test_config_loads(name):
    cfg = load_config(name)
    assert cfg.tasks.name in metarl.envs.names()
    assert cfg.algo.name in name or name == "default"
