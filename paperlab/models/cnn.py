"""A small convolutional network (NHWC, Flax kernel layout ``(H, W, in, out)``)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from paperlab.models._checks import NORMS, choice, positive
from paperlab.models._checks import activation as _activation


class CNN(nnx.Module):
  """``[Conv3x3 -> (Norm) -> act] * len(channels) -> global average pool -> Dense(num_classes)``.

  Sized for 8x8 digits (``digits(as_images=True)``) but works for any spatial size.

  Args:
    in_channels: input channels (1 for digits).
    channels: output channels of each conv layer.
    num_classes: logits.
    kernel_size: square kernel size.
    activation: one of ``paperlab.models.ACTIVATIONS``.
    norm: ``None``, ``"layer"`` or ``"batch"`` after each conv.
    rngs: ``nnx.Rngs``.
  """

  def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32), num_classes: int = 10, *,
               kernel_size: int = 3, activation: str = "relu", norm: str | None = None, rngs: nnx.Rngs):
    self.in_channels = positive("in_channels", in_channels)
    self._act = _activation(activation)
    choice("norm", norm, NORMS)
    chans = [self.in_channels] + [positive("channels[i]", c) for c in channels]
    k = positive("kernel_size", kernel_size)
    self.convs = nnx.List([nnx.Conv(a, b, (k, k), padding="SAME", rngs=rngs) for a, b in zip(chans[:-1], chans[1:])])
    if norm == "layer":
      self.norms = nnx.List([nnx.LayerNorm(c, rngs=rngs) for c in chans[1:]])
    elif norm == "batch":
      self.norms = nnx.List([nnx.BatchNorm(c, momentum=0.9, rngs=rngs) for c in chans[1:]])
    else:
      self.norms = None
    self.head = nnx.Linear(chans[-1], positive("num_classes", num_classes), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"x must have shape (batch, height, width, {self.in_channels}) for CNN, got {tuple(x.shape)}.")
    for i, conv in enumerate(self.convs):
      x = conv(x)
      if self.norms is not None:
        x = self.norms[i](x)
      x = self._act(x)
    return self.head(jnp.mean(x, axis=(1, 2)))
