"""Coordinate check (Tensor Programs V, arXiv:2203.03466, Fig. 5): after a few Adam steps, the hidden layers'
activation scale is flat in width under muP and grows with width under SP.

The catalogue's setting (widths 64..1024, RMS, the SP logits growing > 8x) is asserted as part of the muTransfer
reproduction (tests/experiments/test_param_mutransfer.py, claim keys ``coord_*``); here the same statements at
widths 32..512 (16x) with the l1 statistic, kept cheap for the unit suite."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from paperlab import param
from paperlab.models import MLP

WIDTHS = (32, 128, 512)


def _shapes(width):
  return nnx.eval_shape(lambda: MLP(64, [width, width], 10, rngs=nnx.Rngs(0)))


def _loss(model, batch):
  return optax.softmax_cross_entropy_with_integer_labels(model(batch[0]), batch[1]).mean()


@pytest.fixture(scope="module")
def coords(digits_data):
  batch = (jnp.asarray(digits_data.x_train[:64]), jnp.asarray(digits_data.y_train[:64]))
  base = _shapes(32)
  return {kind: param.coord_check(_shapes, lambda m, kind=kind: param.parametrize(m, base, kind=kind),
                                  lambda p: param.mu_adam(1e-2, p), _loss, batch, widths=WIDTHS, steps=3)
          for kind in ("mup", "sp")}


def test_mup_hidden_activations_stay_within_2x_across_widths(coords):
  for layer in ("hidden/0", "hidden/1", "head"):
    after = coords["mup"][layer][:, -1]
    assert after.max() / after.min() < 2.0, (layer, after)


def test_sp_activations_grow_with_width(coords):
  hidden, logits = coords["sp"]["hidden/1"][:, -1], coords["sp"]["head"][:, -1]
  assert np.all(np.diff(hidden) > 0) and hidden[-1] / hidden[0] > 2.0, hidden
  assert np.all(np.diff(logits) > 0) and logits[-1] / logits[0] > 8.0, logits
  # at initialization both are flat: the growth comes from the updates
  assert coords["sp"]["hidden/1"][:, 0].max() / coords["sp"]["hidden/1"][:, 0].min() < 1.5


def test_coord_check_plot_and_errors(coords, tmp_path):
  path = param.plot_coord_check(coords["mup"], WIDTHS, str(tmp_path / "coords.png"), title="muP")
  with open(path, "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="layers"):
    param.plot_coord_check(coords["mup"], WIDTHS, str(tmp_path / "x.png"), layers=["nope"])
  with pytest.raises(ValueError, match="widths"):
    param.coord_check(_shapes, None, lambda p: optax.adam(1e-2), _loss, None, widths=())
