"""Tests of ``paperlab merge`` (paperlab.merge.command): a run writes a loadable sharded checkpoint and a summary;
errors print one line and leave no output that looks complete (typo'd method, full disk, interrupt)."""

from __future__ import annotations

import argparse
import errno
import json
import os

import ml_dtypes
import numpy as np
import pytest

import paperlab.merge as pm
from paperlab.merge import checkpoint, command


def _model(path, seed):
  rng = np.random.default_rng(seed)
  t = {"model.embed_tokens.weight": rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16)}
  for i in range(2):
    t[f"model.layers.{i}.mlp.up_proj.weight"] = rng.standard_normal((12, 8)).astype(ml_dtypes.bfloat16)
  t["model.norm.weight"] = np.ones(8, ml_dtypes.bfloat16)
  return pm.save_checkpoint(t, path, config={"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2})


@pytest.fixture
def config(tmp_path):
  paths = [_model(tmp_path / n, i) for i, n in enumerate(["base", "a", "b"])]
  cfg = tmp_path / "merge.yml"
  cfg.write_text(f"""
models:
  - model: {paths[1]}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {paths[2]}
    parameters: {{weight: 0.5, density: 0.5}}
base_model: {paths[0]}
merge_method: ties
dtype: float32
out_dtype: bfloat16
""")
  return cfg


def _args(cfg, out, *extra):
  return command.add_arguments(argparse.ArgumentParser()).parse_args([str(cfg), str(out), "--quiet", *extra])


def test_command_line_merges_and_prints_a_summary(config, tmp_path, capsys):
  out = tmp_path / "out"
  args = command.add_arguments(argparse.ArgumentParser()).parse_args(
      [str(config), str(out), "--shard-size", "300", "--json"])
  assert command.main(args) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["tensors"] == 4 and summary["bytes_written"] == 2 * (16 * 8 + 2 * 12 * 8 + 8)
  assert summary["bytes_read"] == 3 * summary["bytes_written"] and summary["peak_rss_bytes"] > 0
  assert os.path.exists(out / checkpoint.INDEX_NAME) and os.path.exists(out / "config.json")
  merged = pm.read_checkpoint(out)
  assert merged["model.layers.0.mlp.up_proj.weight"].dtype == ml_dtypes.bfloat16


def test_typo_in_the_method_is_one_line_and_writes_nothing(config, tmp_path, capsys):
  config.write_text(config.read_text().replace("merge_method: ties", "merge_method: tiess"))
  assert command.main(_args(config, tmp_path / "out")) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "unknown merge_method 'tiess'" in err and "did you mean 'ties'" in err
  assert not (tmp_path / "out").exists()


def test_dry_run_writes_nothing(config, tmp_path, capsys):
  assert command.main(_args(config, tmp_path / "out", "--dry-run")) == 0
  assert "dry run" in capsys.readouterr().out and not (tmp_path / "out").exists()


@pytest.mark.parametrize("failure", ["disk_full", "interrupt"])
def test_a_failed_run_leaves_no_half_written_output(config, tmp_path, capsys, monkeypatch, failure):
  calls = []
  real = checkpoint.CheckpointWriter.write

  def flaky(self, name, value):
    calls.append(name)
    if len(calls) == 3:
      raise OSError(errno.ENOSPC, "No space left on device") if failure == "disk_full" else KeyboardInterrupt()
    return real(self, name, value)

  monkeypatch.setattr(checkpoint.CheckpointWriter, "write", flaky)
  status = command.main(_args(config, tmp_path / "out"))
  err = capsys.readouterr().err.strip()
  assert status == (1 if failure == "disk_full" else 130) and len(err.splitlines()) == 1
  assert ("disk full" if failure == "disk_full" else "interrupted") in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "base", "merge.yml"]  # no out, no temp dir


def _fails_in_one_line(config, tmp_path, capsys, *needles):
  assert command.main(_args(config, tmp_path / "out")) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("paperlab merge: error:"), err
  for needle in needles:
    assert needle in err, err
  assert not (tmp_path / "out").exists() and not any(".partial" in p.name for p in tmp_path.iterdir())


def test_a_missing_base_model_directory_is_one_line_naming_it(config, tmp_path, capsys):
  config.write_text(config.read_text().replace(f"base_model: {tmp_path / 'base'}", f"base_model: {tmp_path / 'nope'}"))
  _fails_in_one_line(config, tmp_path, capsys, str(tmp_path / "nope"), "not a local directory")


def test_ties_without_a_base_model_is_one_line(config, tmp_path, capsys):
  config.write_text("\n".join(line for line in config.read_text().splitlines() if not line.startswith("base_model")))
  _fails_in_one_line(config, tmp_path, capsys, "needs a base_model")


def test_mismatched_architectures_are_one_line_naming_the_model(config, tmp_path, capsys):
  (tmp_path / "b" / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"]}))
  _fails_in_one_line(config, tmp_path, capsys, "mismatched architectures", str(tmp_path / "b"))


def test_a_tensor_of_another_shape_is_one_line_naming_it(config, tmp_path, capsys):
  t = pm.read_checkpoint(tmp_path / "b")
  t["model.layers.1.mlp.up_proj.weight"] = np.zeros((10, 8), ml_dtypes.bfloat16)
  pm.save_checkpoint(t, tmp_path / "b", config={"architectures": ["LlamaForCausalLM"]}, overwrite=True)
  _fails_in_one_line(config, tmp_path, capsys, "model.layers.1.mlp.up_proj.weight", "[10, 8]")
