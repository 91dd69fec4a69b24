"""An experiment's CI scale (``CI_CONFIG``): validated overrides of its default config, >= 3 seeds kept."""

from __future__ import annotations

import textwrap

import pytest

from paperlab.runner.config import ConfigError, apply_overrides, ci_config, load_experiment

_EXPERIMENT = '''
import ml_collections

PAPER_ID = 1
CLAIM = "a claim"
{ci}

def get_config():
  c = ml_collections.ConfigDict()
  c.seeds = 3
  c.steps = 300
  c.model = ml_collections.ConfigDict({{"width": 64}})
  return c

def run(config, ctx):
  return {{"claim": {{"statement": CLAIM, "passed": True}}}}
'''


def _module(tmp_path, ci: str):
  path = tmp_path / "exp.py"
  path.write_text(textwrap.dedent(_EXPERIMENT.format(ci=ci)))
  return load_experiment(path)


def test_no_ci_config_is_the_default_config(tmp_path):
  assert ci_config(_module(tmp_path, "")) == {}


def test_ci_config_overrides_nested_keys(tmp_path):
  module = _module(tmp_path, 'CI_CONFIG = {"steps": 100, "model.width": 32}')
  config = apply_overrides(module.get_config(), ci_config(module))
  assert (config.steps, config.model.width, config.seeds) == (100, 32, 3)


def test_unknown_key_names_the_nearest(tmp_path):
  with pytest.raises(ConfigError, match="step"):
    ci_config(_module(tmp_path, 'CI_CONFIG = {"stepz": 100}'))


def test_wrong_type_and_not_a_mapping(tmp_path):
  with pytest.raises(ConfigError, match="steps"):
    ci_config(_module(tmp_path, 'CI_CONFIG = {"steps": "many"}'))
  with pytest.raises(ConfigError, match="mapping"):
    ci_config(_module(tmp_path, 'CI_CONFIG = [("steps", 100)]'))


def test_the_ci_scale_keeps_three_seeds(tmp_path):
  with pytest.raises(ConfigError, match="seed"):
    ci_config(_module(tmp_path, 'CI_CONFIG = {"seeds": 2}'))
  assert ci_config(_module(tmp_path, 'CI_CONFIG = {"seeds": 3, "steps": 10}')) == {"seeds": 3, "steps": 10}
