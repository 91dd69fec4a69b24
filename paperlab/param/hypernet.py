"""Magnitude-invariant parametrizations (MIP) of hypernetworks.

Ortiz et al., "Magnitude Invariant Parametrizations Improve Hypernetwork Learning" (2023; an earlier
version is titled "Non-Proportional Parametrizations for Stable Hypernetwork Learning"). A hypernetwork maps
hyperparameters ``gamma`` to the weights ``theta = h(gamma; omega)`` of a primary network; with the default
parametrization ``||theta||`` grows with ``||gamma||``, which destabilises training. MIP makes two changes:

1. the input encoding ``gamma -> [cos(pi gamma / 2), sin(pi gamma / 2)]`` (concatenated over the last axis), whose
   norm is ``sqrt(d)`` for every ``gamma`` in ``[0, 1]^d``;
2. the residual output ``theta = theta_0 + h(encode(gamma); omega)``, with ``theta_0`` a learned,
   ``gamma``-independent set of primary weights (in the authors' ``hyperlight`` the bias of the hypernetwork's
   output layer, initialised like the primary network).

The reference implementation is the authors' PyPI package ``hyperlight`` (0.0.5; ``hyperlight/hypernet/encoding.py``
``encode_input`` and ``hyperlight/hypernet/model.py`` ``HyperNet``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from paperlab._checks import check_choice

PyTree = Any

__all__ = ["HYPERNET_ENCODINGS", "encode_hyperparams", "mip_hypernet"]

HYPERNET_ENCODINGS = ("cos|sin", "z|1-z", None)


def encode_hyperparams(gamma: jax.Array, encoding: str | None = "cos|sin") -> jax.Array:
  """Encode hyperparameters ``gamma`` (last axis: the ``d`` hyperparameters) as ``hyperlight``'s ``encode_input``
  (Ortiz et al., 2023, MIP's input encoding; the paper's default ``"cos|sin"``).

  ``"cos|sin"``: ``[cos(pi gamma / 2), sin(pi gamma / 2)]`` concatenated on the last axis (all cosines first), so
  ``||encode(gamma)|| = sqrt(d)`` for every ``gamma``; the paper takes ``gamma`` in ``[0, 1]`` (``hyperlight`` warns
  outside it; this function cannot inspect traced values and does not). ``"z|1-z"``: ``[gamma, 1 - gamma]``.
  ``None``: ``gamma`` unchanged (the default hypernetwork's input).

  Args:
    gamma: floating array ``(..., d)``.
    encoding: one of :data:`HYPERNET_ENCODINGS`.

  Returns:
    ``(..., 2 d)`` (``(..., d)`` for ``None``), in ``gamma``'s dtype.
  """
  check_choice("encoding", encoding, HYPERNET_ENCODINGS)
  gamma = jnp.asarray(gamma)
  if gamma.ndim < 1 or not jnp.issubdtype(gamma.dtype, jnp.floating):
    raise ValueError(f"gamma must be a floating array with a last axis of hyperparameters, got shape {gamma.shape} "
                     f"dtype {gamma.dtype}.")
  if encoding is None:
    return gamma
  if encoding == "cos|sin":
    scaled = jnp.pi * gamma / 2
    return jnp.concatenate([jnp.cos(scaled), jnp.sin(scaled)], -1)
  return jnp.concatenate([gamma, 1 - gamma], -1)


def mip_hypernet(hyper_apply: Callable[[PyTree, jax.Array], PyTree], *, encoding: str | None = "cos|sin",
                 residual: bool = True) -> Callable[[PyTree, jax.Array], PyTree]:
  """A hypernetwork with the magnitude-invariant parametrization (Ortiz et al., 2023:
  ``theta = theta_0 + h(encode(gamma); omega)``).

  Args:
    hyper_apply: ``(omega, encoded_gamma) -> delta``, the hypernetwork ``h``; ``delta`` is a pytree of primary
      weights (shaped like ``theta_0``).
    encoding: the input encoding, one of :data:`HYPERNET_ENCODINGS` (the paper's ``"cos|sin"``; ``None`` for the default
      hypernetwork).
    residual: add the learned ``theta_0`` (the paper's MIP); ``False`` gives the default ``theta = h(gamma)``.

  Returns:
    ``apply(params, gamma) -> theta`` with ``params = {"hyper": omega, "theta0": theta_0}`` when ``residual`` (else
    ``{"hyper": omega}``); pure and jit-able, ``vmap`` it over a batch of ``gamma``.
  """
  check_choice("encoding", encoding, HYPERNET_ENCODINGS)
  if not isinstance(residual, bool):
    raise ValueError(f"residual must be a bool, got {residual!r}.")
  if not callable(hyper_apply):
    raise ValueError(f"hyper_apply must be callable (omega, encoded_gamma) -> weights, got {hyper_apply!r}.")

  def apply(params: PyTree, gamma: jax.Array) -> PyTree:
    needed = {"hyper", "theta0"} if residual else {"hyper"}
    if not isinstance(params, dict) or not needed <= set(params):
      raise ValueError(f"params must be a dict with keys {sorted(needed)}, got "
                       f"{sorted(params) if isinstance(params, dict) else type(params).__name__}.")
    delta = hyper_apply(params["hyper"], encode_hyperparams(gamma, encoding))
    if not residual:
      return delta
    if jax.tree.structure(delta) != jax.tree.structure(params["theta0"]):
      raise ValueError(f"hyper_apply must return a pytree shaped like params['theta0']: got "
                       f"{jax.tree.structure(delta)}, theta0 is {jax.tree.structure(params['theta0'])}.")
    return jax.tree.map(lambda t0, d: t0 + d, params["theta0"], delta)

  return apply
