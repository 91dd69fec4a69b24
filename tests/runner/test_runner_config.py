"""Experiment loading, typed overrides, trial ids and sweep helpers (no JAX needed)."""

from __future__ import annotations

import math
import subprocess

import ml_collections
import pytest

from conftest import PYTHON, REPO, subprocess_env
from paperlab.runner import ConfigError, apply_overrides, grid, load_experiment, log_uniform, product, seeds
from paperlab.runner import trial_id, uniform, zipped


def _config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.name = "mlp"
  c.flag = False
  c.optim = dict(learning_rate=1e-3, schedule=None)
  c.model = dict(widths=(32, 32))
  c.train = dict(num_steps=100)
  return c


def test_overrides_are_parsed_with_the_type_of_the_field():
  c = apply_overrides(_config(), ["optim.learning_rate=3e-4", "train.num_steps=7", "flag=true", "name=cnn",
                                  "model.widths=(8,16)", "optim.schedule='cosine'", "--config.seed=3"])
  assert c.optim.learning_rate == 3e-4 and isinstance(c.optim.learning_rate, float)
  assert c.train.num_steps == 7 and isinstance(c.train.num_steps, int)
  assert c.flag is True and c.name == "cnn" and c.model.widths == (8, 16)
  assert c.optim.schedule == "cosine" and c.seed == 3


def test_int_is_accepted_for_a_float_field_and_the_result_is_locked():
  c = apply_overrides(_config(), {"optim.learning_rate": 1})
  assert c.optim.learning_rate == 1.0 and isinstance(c.optim.learning_rate, float)
  with pytest.raises((AttributeError, KeyError)):
    c.new_field = 1  # locked: no new keys after overrides


def test_overrides_do_not_change_the_original():
  base = _config()
  apply_overrides(base, ["train.num_steps=5"])
  assert base.train.num_steps == 100


def test_typo_in_key_names_the_nearest_key():
  with pytest.raises(ConfigError, match=r"unknown config key 'optim.learnig_rate'; did you mean "
                                        r"'optim.learning_rate'") as e:
    apply_overrides(_config(), ["optim.learnig_rate=1"])
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("override,expected", [("train.num_steps=ten", "int"), ("train.num_steps=1.5", "int"),
                                               ("optim.learning_rate=fast", "float"), ("flag=maybe", "bool")])
def test_wrong_type_names_key_and_expected_type(override, expected):
  with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}.*expected {expected}"):
    apply_overrides(_config(), [override])


def test_sweep_value_of_wrong_type_is_rejected():
  with pytest.raises(ConfigError, match="train.num_steps.*expected int, got str"):
    apply_overrides(_config(), {"train.num_steps": "10"})


def test_missing_experiment_file_suggests_a_close_name(tmp_path):
  (tmp_path / "adamp.py").write_text("def get_config():\n  return None\n")
  with pytest.raises(ConfigError, match=r"experiment file not found: .*adam\.py'; did you mean .*adamp\.py"):
    load_experiment(tmp_path / "adam.py")


def test_trial_id_is_a_stable_hash_of_the_resolved_config():
  a = apply_overrides(_config(), ["seed=1"])
  b = apply_overrides(_config(), {"seed": 1})
  c = apply_overrides(_config(), {"seed": 2})
  assert trial_id(a) == trial_id(b) != trial_id(c)
  assert len(trial_id(a)) == 12


def test_sweep_helpers():
  g = grid(**{"optim.learning_rate": [1e-3, 1e-2], "seed": [0, 1, 2]})
  assert len(g) == 6 and {"optim.learning_rate": 1e-2, "seed": 2} in g
  assert zipped(a=[1, 2], b=[3, 4]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(ValueError, match="equal lengths"):
    zipped(a=[1], b=[1, 2])
  assert seeds(3) == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
  assert len(product(grid(a=[1, 2]), seeds(2))) == 4
  lu = log_uniform("lr", 1e-4, 1e-1, 200, seed=0)
  assert lu == log_uniform("lr", 1e-4, 1e-1, 200, seed=0) != log_uniform("lr", 1e-4, 1e-1, 200, seed=1)
  logs = [math.log10(p["lr"]) for p in lu]
  assert -4 <= min(logs) and max(logs) <= -1
  below = sum(l < -2.5 for l in logs) / len(logs)  # log-uniform: half the mass below the log-midpoint
  assert 0.4 < below < 0.6
  assert all(0 <= p["x"] <= 1 for p in uniform("x", 0, 1, 10))


def _cli(*args, cwd=REPO):
  return subprocess.run([PYTHON, "-m", "paperlab.cli", *args], capture_output=True, text=True, cwd=cwd,
                        env=subprocess_env(), timeout=120)


def test_cli_errors_are_one_line(tmp_path):
  exp = str(REPO / "tests" / "runner" / "digits_exp.py")
  cases = [
      (["run", exp, "--config.optim.learnig_rate=0.1"], "did you mean 'optim.learning_rate'"),
      (["run", exp, "--config.train.num_steps=abc"], "train.num_steps='abc': expected int"),
      (["run", str(tmp_path / "missing.py")], "experiment file not found"),
  ]
  for args, message in cases:
    proc = _cli(*args, "--workdir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
  assert not (tmp_path / "runs").exists()  # nothing ran
