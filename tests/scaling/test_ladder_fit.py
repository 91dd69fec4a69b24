"""Model ladders: the law fitted to a ladder's rungs (paperlab.scaling.ladder) and a tiny char-transformer ladder
trained through the runner (paperlab.runner.ladder)."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from paperlab import scaling


def test_fit_ladder_recovers_a_known_law_from_noisy_seeds():
  n = np.array([1e4, 3e4, 1e5, 3e5, 1e6])
  truth = {"a": 40.0, "b": 0.35, "c": 1.2}
  rng = np.random.default_rng(0)
  clean = truth["c"] + truth["a"] * n ** -truth["b"]
  losses = clean[:, None] * np.exp(rng.normal(0.0, 1e-3, (5, 3)))  # 3 seeds, 0.1% noise
  fit = scaling.fit_ladder(n, losses)
  for k, v in truth.items():
    assert fit[k] == pytest.approx(v, rel=0.05), k
  np.testing.assert_allclose(scaling.predict_ladder(fit, 1e8), truth["c"] + truth["a"] * 1e8 ** -truth["b"],
                             rtol=0.02)


def test_ladder_points_sorts_rungs_and_averages_seeds():
  n, mean, std = scaling.ladder_points([300, 100, 200], [[2.0, 4.0], [5.0, 5.0], [3.0, 3.0]])
  np.testing.assert_array_equal(n, [100, 200, 300])
  np.testing.assert_array_equal(mean, [5.0, 3.0, 3.0])
  np.testing.assert_array_equal(std, [0.0, 0.0, 1.0])


@pytest.mark.parametrize("num_params, losses, match", [
    ([1e3, 1e4], [3.0, 2.0], "at least 3 rungs"),
    ([1e3, 1e4, 1e5], [3.0, 2.0], "must have shape"),
    ([1e3, 1e3, 1e5], [3.0, 2.0, 1.5], "distinct"),
    ([1e3, 1e4, 1e5], [[3.0, 3.1], [2.0, np.nan], [1.5, 1.5]], "num_params=10000, seed index 1"),
    ([1e3, -1e4, 1e5], [3.0, 2.0, 1.5], "positive"),
])
def test_fit_ladder_rejects_bad_ladders(num_params, losses, match):
  with pytest.raises(ValueError, match=match):
    scaling.fit_ladder(num_params, losses)


def test_pure_power_law_needs_two_rungs():
  fit = scaling.fit_ladder([1e3, 1e5], [4.0, 2.0], with_offset=False)
  assert fit["c"] == 0.0 and fit["b"] == pytest.approx(np.log(2) / np.log(100), rel=1e-6)
  with pytest.raises(TypeError, match="fit must be a Fit"):
    scaling.predict_ladder({"a": 1.0}, 10.0)


def test_char_transformer_ladder_through_the_runner(tmp_path):
  from paperlab.runner import ladder  # pylint: disable=g-import-not-at-top
  overrides = {"num_layers": 1, "num_heads": 2, "seq_len": 4, "num_chars": 2000, "seeds": 2, "num_steps": 4,
               "batch_size": 4, "eval_windows": 8, "base_d_model": 4, "learning_rate": 1e-2}
  # two rungs (each width is one compile, most of this test's time) and a pure power law; the law with its
  # irreducible term is checked on synthetic rungs above
  rungs, fit = ladder.fit_char_ladder((8, 4), workdir=tmp_path, overrides=overrides, with_offset=False)
  np.testing.assert_array_equal(rungs.widths, [4, 8])
  assert rungs.losses.shape == (2, 2) and np.all(np.isfinite(rungs.losses))
  assert np.all(np.diff(rungs.num_params) > 0)
  # non-embedding count of a 1-block CharTransformer: 12 d^2 + 9 d block weights/biases/norms, final LN 2 d, head d V
  from paperlab import data  # pylint: disable=g-import-not-at-top
  vocab = data.char_dataset("grammar", num_chars=2000).tokenizer.vocab_size
  d = rungs.widths
  np.testing.assert_array_equal(rungs.num_params, 12 * d**2 + 9 * d + 2 * d + d * vocab)
  for w, trial in zip(rungs.widths, rungs.trial_dirs):  # one runner trial per width, its seeds in one program
    result = json.loads((pathlib.Path(trial) / "result.json").read_text())
    assert json.loads((pathlib.Path(trial) / "config.json").read_text())["d_model"] == w
    assert len(result["test_loss"]) == 2
  assert np.isfinite([fit["a"], fit["b"]]).all() and fit["c"] == 0.0
  again = ladder.train_ladder((4, 8), workdir=tmp_path, overrides=overrides)  # resumed from the run store
  np.testing.assert_array_equal(again.losses, rungs.losses)
  with pytest.raises(ValueError, match="d_model"):
    ladder.train_ladder((4, 8), workdir=tmp_path, overrides={"d_model": 8})
