"""paperlab.scaling.time_budget (Inbar et al., 2024): the step-time regression against numpy.polyfit and scipy,
loss_at_time against the compute-based Chinchilla law it reduces to when t_step is proportional to N, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from paperlab import scaling

H = {"num_layers": np.array([1, 2, 2, 4, 3.0]), "d_model": np.array([32, 64, 128, 32, 96.0]),
     "seq_len": np.array([32, 128, 64, 256, 64.0]), "batch_size": np.array([4, 8, 32, 16, 8.0])}


def test_counts_follow_their_formulas():
  h = {"num_layers": 2, "d_model": 64, "seq_len": 32, "batch_size": 8, "num_heads": 4, "vocab_size": 100}
  n = 12 * 2 * 64 ** 2
  assert scaling.transformer_flops(h) == 6 * n * 8 * 32
  activations = 3 * 2 * (18 * 8 * 32 * 64 + 2 * 8 * 4 * 32 ** 2)
  assert scaling.copy_count(h) == activations + 3 * 8 * 32 * 100 + 10 * (n + 2 * 100 * 64)


@pytest.mark.parametrize("features", ["copies", "flops"])
def test_step_time_model_is_scipy_linregress(features):
  x = scaling.copy_count(H) if features == "copies" else scaling.transformer_flops(H)
  times = 1e-3 + 2e-9 * x + np.array([1e-4, -2e-4, 5e-5, 0.0, 3e-5])
  fit = scaling.step_time_model(H, times, features=features)
  ref = stats.linregress(x, times)
  np.testing.assert_allclose([fit["w"], fit["b"], fit["r2"]], [ref.slope, ref.intercept, ref.rvalue ** 2],
                             rtol=1e-6)
  assert fit.law == f"step_time_{features}" and fit.num_points == 5
  np.testing.assert_allclose(scaling.predict_step_time(fit, H), ref.intercept + ref.slope * x, rtol=1e-9)


@settings(max_examples=15, deadline=None)
@given(w=st.floats(1e-12, 1e-6), T=st.floats(1.0, 1e6), layers=st.integers(1, 8), d=st.sampled_from([32, 64, 256]),
       batch=st.integers(1, 64), seq=st.sampled_from([16, 128]))
def test_loss_at_time_with_step_time_proportional_to_n_is_the_compute_law(w, T, layers, d, batch, seq):
  # the FLOPs model without intercept: t_step = w * 6 N b s, so D(T) = T b s / t_step = (T / w) / (6 N) = C / (6 N)
  time_fit = scaling.Fit(law="step_time_flops", params={"w": w, "b": 0.0, "r2": 1.0}, objective=0.0, num_points=3)
  h = {"num_layers": layers, "d_model": d, "seq_len": seq, "batch_size": batch}
  n = 12 * layers * d ** 2
  expected = float(scaling.chinchilla_loss(n, (T / w) / (6 * n)))
  np.testing.assert_allclose(scaling.loss_at_time(scaling.CHINCHILLA, time_fit, h, T), expected, rtol=1e-5)


def test_loss_at_time_falls_with_the_budget_and_takes_a_chinchilla_fit():
  times = 1e-3 + 2e-9 * scaling.copy_count(H)
  time_fit = scaling.step_time_model(H, times)
  losses = scaling.loss_at_time(scaling.CHINCHILLA, time_fit, {k: v[1] for k, v in H.items()}, [1e2, 1e4, 1e6])
  assert np.all(np.diff(losses) < 0) and np.all(losses > scaling.CHINCHILLA.E)
  chinchilla = scaling.Fit(law="chinchilla", params=dict(scaling.CHINCHILLA._asdict()), objective=0.0, num_points=5)
  np.testing.assert_allclose(scaling.loss_at_time(chinchilla, time_fit, H, 1e4),
                             scaling.loss_at_time(scaling.CHINCHILLA, time_fit, H, 1e4), rtol=1e-12)


def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="hparams"):
    scaling.copy_count({"num_layers": 2, "d_model": 64, "seq_len": 32})
  with pytest.raises(ValueError, match="hparams"):
    scaling.copy_count({**{k: v[0] for k, v in H.items()}, "depth": 3})
  with pytest.raises(ValueError, match="hparams"):
    scaling.transformer_flops({**{k: v[0] for k, v in H.items()}, "batch_size": 0})
  with pytest.raises(ValueError, match="features"):
    scaling.step_time_model(H, np.ones(5), features="params")
  with pytest.raises(ValueError, match="times"):
    scaling.step_time_model(H, np.ones(4))
  with pytest.raises(ValueError, match="times"):
    scaling.step_time_model(H, -np.ones(5))
  fit = scaling.step_time_model(H, 1e-3 + 2e-9 * scaling.copy_count(H))
  with pytest.raises(ValueError, match="T"):
    scaling.loss_at_time(scaling.CHINCHILLA, fit, H, 0.0)
  with pytest.raises(ValueError, match="time_fit"):
    scaling.loss_at_time(scaling.CHINCHILLA, scaling.CHINCHILLA, H, 1.0)
  with pytest.raises(ValueError, match="chinchilla_fit"):
    scaling.loss_at_time(fit, fit, H, 1.0)
