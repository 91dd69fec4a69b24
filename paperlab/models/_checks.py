"""Argument validation shared by the models."""

from __future__ import annotations

from typing import Any, Callable

import jax

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jax.numpy.tanh,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}
NORMS = (None, "layer", "batch")


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}.")
  return ACTIVATIONS[name]


def choice(arg: str, value: Any, accepted: tuple) -> Any:
  if value not in accepted:
    raise ValueError(f"{arg} must be one of {list(accepted)}, got {value!r}.")
  return value


def positive(arg: str, value: int) -> int:
  if int(value) != value or value < 1:
    raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
  return int(value)


def input_shape(x: jax.Array, trailing: tuple[int, ...], what: str) -> None:
  if x.ndim < len(trailing) + 1 or tuple(x.shape[-len(trailing):]) != trailing:
    raise ValueError(
        f"x must have shape (batch, {', '.join(map(str, trailing))}) for {what}, got {tuple(x.shape)}.")
