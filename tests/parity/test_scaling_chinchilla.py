"""Parity of the Chinchilla approach-3 fit with Epoch AI's replication code, and of the compute-optimal allocation
with a numerical constrained minimization (scipy).

Oracle: Besiroglu et al., "Chinchilla Scaling: A replication attempt" (arXiv:2404.10102), repository
epoch-research/analyzing-chinchilla, file ``data_analysis.ipynb`` at commit
92258837425e1b5f2851d624287f0120583a3d0e, cells 16 and 18 (``log_sum_exp``, ``custom_huber_loss``,
``huber_loss_objective``; L-BFGS-B from a start with finite-difference gradients), transcribed below with
``autograd.numpy`` replaced by ``numpy`` (the same functions).

The published-data check: the Chinchilla paper does not publish its ~400 runs. The only available points are the
245 that Besiroglu et al. digitized from the paper's Figure 4 (``data/svg_extracted_data.csv`` of that repository).
That repository has no license file, so the CSV is not redistributed here: the test reads it from the path in
``$PAPERLAB_CHINCHILLA_CSV`` (get it with
``git show 92258837425e1b5f2851d624287f0120583a3d0e:data/svg_extracted_data.csv`` in a clone of the repository)
and is skipped without it.
"""

from __future__ import annotations

import csv
import os
import pathlib

import jax
import numpy as np
import pytest
import scipy.optimize

from paperlab import scaling


# --- transcription of epoch-research/analyzing-chinchilla data_analysis.ipynb @ 92258837, cell 16 ---------------
def log_sum_exp(a, b, e, alpha, beta, N, D):
  return np.log(np.exp(a - alpha * np.log(N)) + np.exp(b - beta * np.log(D)) + np.exp(e))


def custom_huber_loss(y_true, y_pred, delta=1e-3):
  diff = y_true - y_pred
  cond = np.abs(diff) <= delta
  loss = np.where(cond, 0.5 * diff**2, delta * (np.abs(diff) - 0.5 * delta))
  return np.sum(loss)


def huber_loss_objective(params, N, D, losses):
  a, b, e, alpha, beta = params
  predictions = log_sum_exp(a, b, e, alpha, beta, N, D)
  return custom_huber_loss(np.log(losses), predictions, delta=1e-3)
# --- end of transcription -------------------------------------------------------------------------------------


def _points(seed=3, n=40):
  rng = np.random.default_rng(seed)
  N = np.exp(rng.uniform(np.log(1e7), np.log(1e11), n))
  D = np.exp(rng.uniform(np.log(1e8), np.log(1e13), n))
  return N, D, np.asarray(scaling.chinchilla_loss(N, D), np.float64) * np.exp(0.01 * rng.standard_normal(n))


def test_objective_minimum_matches_epoch_replication_code():
  """Same points, same start: Epoch's objective minimized by L-BFGS-B (their finite-difference gradients, our
  tolerances) and ``fit_chinchilla`` (exact gradient) agree on every constant to 1e-3 relative (measured 2.6e-4 on
  A, the flattest direction; the finite-difference run stops 1.2e-11 higher on the objective) and ours reaches an
  objective at least as low. Our public pieces (``chinchilla_loss`` in float64, ``huber``) give their objective at
  their optimum to 1e-12."""
  N, D, L = _points()
  start = np.array([5.0, 5.0, 0.5, 0.3, 0.3])
  ours = scaling.fit_chinchilla(N, D, L, init_grid=start[None])
  theirs = scipy.optimize.minimize(huber_loss_objective, start, args=(N, D, L), method="L-BFGS-B",
                                   options=scaling.LBFGS_OPTIONS)
  a, b, e, alpha, beta = theirs.x
  expected = {"A": np.exp(a), "B": np.exp(b), "E": np.exp(e), "alpha": alpha, "beta": beta}
  for k, v in expected.items():
    assert ours[k] == pytest.approx(v, rel=1e-3), k
  assert ours.objective <= theirs.fun + 1e-15
  with jax.enable_x64(True):
    pred = np.log(np.asarray(scaling.chinchilla_loss(N, D, scaling.ChinchillaParams(*(expected[k] for k in (
        "E", "A", "B", "alpha", "beta"))))))
  assert float(np.sum(scaling.huber(pred - np.log(L)))) == pytest.approx(theirs.fun, abs=1e-12)


def test_compute_optimal_matches_scipy_constrained_minimization():
  """N_opt(C) from the closed form (Hoffmann et al., eq. 4) vs SLSQP minimizing L(N, D) subject to 6 N D = C (in
  log variables); agreement to 1e-4 relative, for the paper's constants and for a fit's constants."""
  for params in (scaling.CHINCHILLA, scaling.ChinchillaParams(1.82, 482.01, 2085.43, 0.3478, 0.3658)):
    for C in (1e20, 5.76e23, 1e26):
      n_opt, d_opt = scaling.compute_optimal(params, C)
      loss = lambda z, p=params: p.E + p.A * np.exp(-p.alpha * z[0]) + p.B * np.exp(-p.beta * z[1])
      budget = {"type": "eq", "fun": lambda z, C=C: z[0] + z[1] + np.log(6.0) - np.log(C)}
      res = scipy.optimize.minimize(loss, [np.log(C) / 2 - 1, np.log(C) / 2 - 1], constraints=[budget],
                                    method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
      assert res.success
      assert np.exp(res.x[0]) == pytest.approx(float(n_opt), rel=1e-4)
      assert np.exp(res.x[1]) == pytest.approx(float(d_opt), rel=1e-4)


def _epoch_csv() -> pathlib.Path:
  path = os.environ.get("PAPERLAB_CHINCHILLA_CSV")
  if not path:
    pytest.skip("PAPERLAB_CHINCHILLA_CSV not set: Epoch AI's digitized Chinchilla points have no license file, so "
                "they are not redistributed (see the module docstring for how to get them)")
  return pathlib.Path(path)


@pytest.mark.slow
def test_fitting_the_digitized_chinchilla_points_reproduces_the_replication():
  """Fit the 240 points Besiroglu et al. fit (the 245 digitized from Hoffmann et al.'s Figure 4 minus the 5 with
  the highest loss, D = C / (6 N)) by the paper's procedure: Huber(1e-3) on log loss, L-BFGS-B from all 4500 grid
  starts, keep the best (several minutes on one busy core).

  Matched: (1) the replication's own run of this procedure (notebook cell 18, "Replicate exactly": A 477.84,
  B 2143.86, E 1.8172, alpha 0.34731, beta 0.36718; objective 1.01827e-3) to 1e-3 relative on every constant
  (measured: A 477.83, B 2143.42, E 1.81722, alpha 0.34731, beta 0.36717; objective 1.018274e-3, lower than
  theirs by 2e-14); (2) the estimates the replication reports (arXiv:2404.10102, Table 1; cell 25: A 482.01
  (se 124.52), B 2085.43 (se 1293.28), E 1.8169 (se 0.0257), alpha 0.3478 (se 0.0154), beta 0.3658 (se 0.0206))
  -- alpha, beta and E to 2 decimals (|diff| < 0.005), A and B within one standard error.
  Hoffmann et al.'s own constants (E 1.69, A 406.4, B 410.7, alpha 0.34, beta 0.28) are NOT reproduced from these
  points (beta 0.367 vs 0.28): that is the replication's finding, which this fit confirms.
  """
  rows = list(csv.DictReader(_epoch_csv().open()))
  N = np.array([float(r["Model Size"]) for r in rows])
  C = np.array([float(r["Training FLOP"]) for r in rows])
  L = np.array([float(r["loss"]) for r in rows])
  assert len(rows) == 245
  keep = L < np.sort(L)[-5]
  fit = scaling.fit_chinchilla(N[keep], C[keep] / (6 * N[keep]), L[keep])
  assert fit.num_points == 240
  cell_18 = {"A": 477.84171252965143, "B": 2143.8637880335505, "E": 1.817235504463726, "alpha": 0.34731265761033453,
             "beta": 0.3671826173946711}
  for k, v in cell_18.items():
    assert fit[k] == pytest.approx(v, rel=1e-3), k
  assert fit.objective <= 0.0010182740346154362 + 1e-12
  assert abs(fit["alpha"] - 0.3478) < 0.005 and abs(fit["beta"] - 0.3658) < 0.005
  assert abs(fit["E"] - 1.8169) < 0.005
  assert abs(fit["A"] - 482.01) < 124.52 and abs(fit["B"] - 2085.43) < 1293.28
  assert fit["beta"] > 0.28 + 0.05  # Hoffmann et al.'s beta is outside
