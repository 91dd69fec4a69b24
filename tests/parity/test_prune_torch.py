"""Parity of the magnitude masks with ``torch.nn.utils.prune`` (the maintained PyTorch implementation):
``prune.global_unstructured(..., pruning_method=prune.L1Unstructured, amount=s)`` for ``scope="global"`` and
``prune.l1_unstructured(module, "weight", amount=s)`` for ``scope="layer"``; masks must be identical (continuous
random weights, so there are no ties), for several sparsities including ones where ``s * n`` is not an integer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils import prune as tprune  # noqa: E402

import paperlab.prune as pr  # noqa: E402

SHAPES = {"a": (12, 7), "b": (7, 9), "c": (9, 3)}


def _setup(seed):
  torch.manual_seed(seed)
  layers = {k: torch.nn.Linear(i, o) for k, (i, o) in SHAPES.items()}
  params = {k: {"kernel": jnp.asarray(l.weight.detach().numpy().T), "bias": jnp.asarray(l.bias.detach().numpy())}
            for k, l in layers.items()}
  return layers, params


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.77, 0.9])
def test_global_magnitude_mask_equals_torch_global_unstructured(s):
  layers, params = _setup(0)
  tprune.global_unstructured([(l, "weight") for l in layers.values()], pruning_method=tprune.L1Unstructured, amount=s)
  masks = pr.magnitude_masks(params, s, scope="global")
  for k, l in layers.items():
    np.testing.assert_array_equal(np.asarray(masks[k]["kernel"]), l.weight_mask.numpy().T.astype(bool))
    assert bool(jnp.all(masks[k]["bias"]))  # biases are not prunable by default


@pytest.mark.parametrize("s", [0.1, 0.5, 0.66, 0.95])
def test_layer_magnitude_mask_equals_torch_l1_unstructured(s):
  layers, params = _setup(1)
  for l in layers.values():
    tprune.l1_unstructured(l, "weight", amount=s)
  masks = jax.jit(lambda p: pr.magnitude_masks(p, s, scope="layer"))(params)
  for k, l in layers.items():
    np.testing.assert_array_equal(np.asarray(masks[k]["kernel"]), l.weight_mask.numpy().T.astype(bool))
