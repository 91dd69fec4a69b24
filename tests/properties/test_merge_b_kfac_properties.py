"""Hypothesis properties of the K-FAC output factor (merge.output_gradient_grams)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st

from paperlab import merge, models, train

SETTINGS = settings(max_examples=4, deadline=None, derandomize=True)


@SETTINGS
@given(width=st.integers(2, 6), classes=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_one_example_kfac_is_the_exact_fisher_block_and_the_head_factor_kills_shifts(width, classes, seed):
  # For a single example the layer input a is fixed, so sum_y p_y (a g_y^T)(a g_y^T)^T = (a a^T) (x) S exactly.
  graphdef, init = train.make_init(lambda r: models.MLP(3, [width], classes, rngs=r), optax.sgd(0.1))
  params = init(jax.random.key(seed)).params
  x = jax.random.normal(jax.random.key(seed + 1), (1, 3))
  grams_in = merge.gram_matrices(graphdef, params, x)
  grams_out = merge.output_gradient_grams(graphdef, params, x)
  apply = merge.model_apply(graphdef)
  for layer, sub in (("hidden/0", ("hidden", 0)), ("head", ("head",))):
    def log_probs(k, sub=sub):
      p = jax.tree.map(lambda v: v, params)
      node = p
      for key in sub:
        node = node[key]
      node["kernel"] = k
      return jax.nn.log_softmax(apply(p, x)[0])
    kernel = params[sub[0]] if len(sub) == 1 else params[sub[0]][sub[1]]
    jac = jax.jacrev(log_probs)(kernel["kernel"]).reshape(classes, -1)
    probs = jnp.exp(log_probs(kernel["kernel"]))
    exact = np.einsum("c,ci,cj->ij", probs, jac, jac)
    name = f"{layer}/kernel"
    np.testing.assert_allclose(np.kron(grams_in[name], grams_out[name]), exact, atol=1e-5)
  # softmax is shift-invariant: the logits' factor has the all-ones vector in its null space
  np.testing.assert_allclose(grams_out["head/kernel"] @ np.ones(classes), 0.0, atol=1e-6)
