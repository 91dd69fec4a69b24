"""output_gradient_grams: the K-FAC output factor against closed forms and an independent bias-Jacobian estimate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paperlab import merge, models, train


def _model(widths, seed=0):
  graphdef, init = train.make_init(lambda r: models.MLP(6, widths, 4, rngs=r), optax.sgd(0.1))
  return graphdef, init(jax.random.key(seed)).params


def test_softmax_regression_matches_the_closed_form():
  # One Linear layer: d log p(y|x) / d logits = e_y - p, so sum_y p_y g_y g_y^T = diag(p) - p p^T.
  graphdef, params = _model([])
  x = jax.random.normal(jax.random.key(1), (37, 6))
  got = jax.jit(lambda p, x: merge.output_gradient_grams(graphdef, p, x, chunk=8))(params, x)
  p = np.asarray(jax.nn.softmax(merge.model_apply(graphdef)(params, x)), np.float64)
  want = np.mean([np.diag(pi) - np.outer(pi, pi) for pi in p], axis=0)
  assert set(got) == {"head/kernel"}
  np.testing.assert_allclose(got["head/kernel"], want, atol=1e-6)


def test_hidden_layers_match_bias_jacobians():
  # For a Dense layer the gradient w.r.t. its output equals the gradient w.r.t. its bias.
  graphdef, params = _model([5, 3])
  apply = merge.model_apply(graphdef)
  x = jax.random.normal(jax.random.key(2), (11, 6))
  got = merge.output_gradient_grams(graphdef, params, x, chunk=4)

  def log_probs(biases, xi):
    p = {**params, "hidden": {i: {**params["hidden"][i], "bias": biases[i]} for i in params["hidden"]}}
    return jax.nn.log_softmax(apply(p, xi[None])[0])

  biases = {i: params["hidden"][i]["bias"] for i in params["hidden"]}
  pr = np.exp(np.asarray(jax.vmap(lambda xi: log_probs(biases, xi))(x), np.float64))  # (n, classes)
  jac = jax.vmap(lambda xi: jax.jacrev(log_probs)(biases, xi))(x)  # {i: (n, classes, out)}
  for i in params["hidden"]:
    want = np.einsum("nc,nci,ncj->ij", pr, np.asarray(jac[i], np.float64), np.asarray(jac[i], np.float64)) / len(x)
    np.testing.assert_allclose(got[f"hidden/{i}/kernel"], want, rtol=1e-4, atol=1e-7)
    assert np.all(np.linalg.eigvalsh(np.asarray(got[f"hidden/{i}/kernel"], np.float64)) > -1e-7)


def test_rejects_bad_arguments():
  graphdef, params = _model([])
  with pytest.raises(ValueError, match="chunk"):
    merge.output_gradient_grams(graphdef, params, jnp.ones((2, 6)), chunk=0)
  with pytest.raises(ValueError, match="at least one example"):
    merge.output_gradient_grams(graphdef, params, jnp.ones((0, 6)))
