"""Multi-layer perceptron."""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from paperlab.models._checks import ACTIVATIONS, NORMS, choice, input_shape, positive
from paperlab.models._checks import activation as _activation


class MLP(nnx.Module):
  """``in -> [Dense -> (Norm) -> act] * len(widths) -> Dense(out)``.

  Args:
    in_features: input width.
    widths: hidden widths; scale them for parametrization studies.
    out_features: output width (logits).
    activation: one of ``paperlab.models.ACTIVATIONS``.
    norm: ``None``, ``"layer"`` or ``"batch"`` after each hidden Dense layer (a Dense kernel followed by a
      norm layer is scale-invariant, the setting of AdamP).
    use_bias: whether Dense layers have a bias.
    rngs: ``nnx.Rngs`` for initialization.
  """

  def __init__(self, in_features: int, widths: Sequence[int], out_features: int, *,
               activation: str = "relu", norm: str | None = None, use_bias: bool = True, rngs: nnx.Rngs):
    self.in_features = positive("in_features", in_features)
    self.act_name = activation
    self._act = _activation(activation)
    choice("norm", norm, NORMS)
    widths = [positive("widths[i]", w) for w in widths]
    dims = [self.in_features] + widths
    self.hidden = nnx.List([nnx.Linear(a, b, use_bias=use_bias, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
    if norm == "layer":
      self.norms = nnx.List([nnx.LayerNorm(w, rngs=rngs) for w in widths])
    elif norm == "batch":
      self.norms = nnx.List([nnx.BatchNorm(w, momentum=0.9, rngs=rngs) for w in widths])
    else:
      self.norms = None
    self.head = nnx.Linear(dims[-1], positive("out_features", out_features), use_bias=use_bias, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    input_shape(x, (self.in_features,), "MLP")
    for i, layer in enumerate(self.hidden):
      x = layer(x)
      if self.norms is not None:
        x = self.norms[i](x)
      x = self._act(x)
    return self.head(x)


__all__ = ["MLP", "ACTIVATIONS"]
