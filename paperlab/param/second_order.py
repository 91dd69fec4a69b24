"""muP for second-order optimizers: K-FAC and Shampoo (per-layer learning rates, damping, init).

Ishikawa & Karakida, "On the Parameterization of Second-Order Optimization Effective Towards the Infinite Width"
(ICLR 2024, arXiv:2312.12226). A Kronecker-factored update of a dense kernel ``W`` (Flax layout ``(fan_in,
fan_out)``, gradient ``G``) is

    ``Delta W = -eta_l (A + rho_A I)^{-e} G (B + rho_B I)^{-e}``      (:func:`kronecker_precondition`)

with ``A = E[h h^T]`` over the layer's inputs and ``B = E[delta delta^T]`` over the gradients of its outputs
(K-FAC, ``e = 1``), or ``A = sum G G^T``, ``B = sum G^T G`` (Shampoo, exponent ``1/4`` per side, which acts on
the K-FAC factors like ``e = 1/2``). The paper's one-step analysis asks, as muP does, that every layer's update
change its output coordinates by ``Theta(1)``. With muP's init (inputs ``h`` of a width-``n`` layer have
``|h|^2 ~ n``; the gradients of a width-``n`` output have coordinates ``~ 1/n``, so ``|delta|^2 ~ 1/n``), the
feature change ``Delta W^T h ~ delta |h|^{2(1-e)} / |delta|^{2e}`` is ``Theta(1)`` when

* **learning rate** ``eta_l = eta (m_out / m_in)^{1-e}`` (``m_in``, ``m_out``: the fan-in and fan-out width
  multipliers against the base model). K-FAC (``e = 1``): every layer's LR is width-independent (the paper's
  Table 1). Shampoo (``e = 1/2``): ``sqrt(m_out)`` for the input layer, ``1 / sqrt(m_in)`` for the readout, 1 for
  hidden layers. ``e = 0`` gives back SGD's muP (Tensor Programs V, Table 3).
* **damping** scaled with its factor's eigenvalues, so that its relative size does not depend on width: K-FAC's
  ``rho_A`` times ``m_in`` (``A``'s eigenvalues ``~ |h|^2``) and ``rho_B`` divided by ``m_out`` (``B``'s ``~
  |delta|^2``); Shampoo's ``epsilon`` (both factors' eigenvalues are ``~ |h|^2 |delta|^2``) times ``m_in /
  m_out``. A width-independent damping instead dominates ``B`` at large width (``|delta|^2 -> 0``) and turns
  the update into a first-order one with a vanishing step.
* **init**: muP's (Tensor Programs V, Table 3 form: weights ``sigma / sqrt(fan_in)``, readout ``sigma
  sqrt(base_fan_in) / fan_in``, biases at the base model's scale), no forward multipliers. The readout is *not*
  zero-initialized: under K-FAC a zero readout makes the first update NNGP-like (the paper's Sec. 4.3), so a small
  random readout is used.

The paper's text was not retrievable here: the learning-rate exponents are derived above from its one-step
criterion (K-FAC's width-independent LRs match its Table 1 as the catalogue quotes it), and the damping rule is
the one that keeps each factor's damping at a fixed fraction of its eigenvalues; both are checked by the property
that the one-step feature change is width-independent (``tests/param/test_second_order_param.py``).

Vectors (biases, norm scales) are preconditioned entrywise in practice (K-FAC folds a bias into its layer's
homogeneous coordinate; Shampoo implementations precondition 1-D parameters diagonally), so they keep
muP-for-Adam's width-independent LR (multiplier 1) and no damping multiplier.

These rules are a :class:`paperlab.param.Parametrization` (``kind="mup"``, ``optimizer`` the method), so
``init_params``, ``apply_multipliers`` and ``scale_by_param_lr`` apply them, plus per-leaf damping multipliers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from paperlab._checks import check_choice, check_non_negative, check_positive
from paperlab.param.parametrization import Parametrization, parametrize

PyTree = Any

__all__ = ["SECOND_ORDER_METHODS", "SecondOrderSpec", "second_order_mup", "kronecker_precondition"]

SECOND_ORDER_METHODS = ("kfac", "shampoo")
# the exponent each method applies to K-FAC-type factors (Shampoo's (G G^T)^{-1/4} ~ (|h|^2 B)^{-1/4} ... acts on
# the rank-one direction like B^{-1/2}).
_EFFECTIVE_EXPONENT = {"kfac": 1.0, "shampoo": 0.5}
_MATRIX_ROLES = ("input", "embedding", "hidden", "output", "fixed")


class SecondOrderSpec(NamedTuple):
  """muP for a second-order method (Ishikawa & Karakida, arXiv:2312.12226).

  Attributes:
    parametrization: init stds, forward multipliers (all 1) and learning-rate multipliers, for
      :func:`paperlab.param.init_params` and :func:`paperlab.param.scale_by_param_lr`.
    damping_in: pytree of multipliers of the damping of the fan-in-side factor (K-FAC's ``rho_A``; Shampoo's
      ``epsilon`` of ``G G^T``).
    damping_out: pytree of multipliers of the damping of the fan-out-side factor (K-FAC's ``rho_B``; Shampoo's
      ``epsilon`` of ``G^T G``).
  """

  parametrization: Parametrization
  damping_in: PyTree
  damping_out: PyTree

  @property
  def lr_multipliers(self) -> PyTree:
    return self.parametrization.lr_multipliers


def second_order_mup(model_or_params: Any, base: Any, *, method: str = "kfac", delta: Any = None,
                     roles: Mapping[str, str] | None = None, init_gain: float = 1.0, bias_gain: float = 0.0,
                     embedding_std: float = 1.0) -> SecondOrderSpec:
  """muP for K-FAC or Shampoo (Ishikawa & Karakida, "On the Parameterization of Second-Order Optimization
  Effective Towards the Infinite Width", arXiv:2312.12226, Table 1 and Sec. 4): per-parameter init std, LR
  multiplier ``(m_out / m_in)^{1-e}`` and damping multipliers (the rules are in the module docstring).

  Roles come from :func:`paperlab.param.infer_roles` (shapes against ``base``, overridable by ``roles``).

  Args:
    model_or_params: the model (``nnx.Module``, ``nnx.State`` or parameter pytree, arrays or shapes).
    base: the base model (same architecture, base width); every multiplier is 1 at its shapes.
    method: ``"kfac"`` (``e = 1``) or ``"shampoo"`` (exponent 1/4 per side, ``e = 1/2``).
    delta: a model of another width marking the width dimensions (when the model has the base shapes).
    roles: ``{regex: role}`` overrides of the inferred roles.
    init_gain: ``sigma`` of the weights' std ``sigma / sqrt(fan_in)``.
    bias_gain: biases' std at the base model is ``bias_gain / sqrt(fan_in)`` (0: zeros).
    embedding_std: std of ``embedding`` leaves.

  Returns:
    A :class:`SecondOrderSpec`.

  Raises:
    ValueError: an unknown method or role, non-positive gains, or roles that cannot be inferred.
  """
  check_choice("method", method, SECOND_ORDER_METHODS)
  check_positive("init_gain", init_gain)
  check_non_negative("bias_gain", bias_gain)
  check_non_negative("embedding_std", embedding_std)
  mup = parametrize(model_or_params, base, kind="mup", optimizer="adam", delta=delta, roles=roles,
                    init_gain=init_gain, bias_gain=bias_gain, embedding_std=embedding_std)
  e = _EFFECTIVE_EXPONENT[method]
  rules, damping_in, damping_out = {}, [], []
  for path, r in mup.rules.items():
    matrix = r.role in _MATRIX_ROLES and len(r.shape) >= 2
    std, scale = r.init_std, r.init_scale
    if r.role == "output":
      # TP5 Table 3's readout std sigma sqrt(base_fan_in)/fan_in (mup's Table 8 form has std * sqrt(m_in) and a
      # 1/m_in multiplier; a preconditioned update is not invariant to that reparametrization).
      std, scale = r.init_std / r.fan_in_mult, 1.0 / math.sqrt(r.fan_in_mult)
    lr = (r.fan_out_mult / r.fan_in_mult) ** (1.0 - e) if matrix else 1.0
    rules[path] = dataclasses.replace(r, init_std=float(std), init_scale=float(scale), multiplier=1.0,
                                      lr_multiplier=float(lr))
    if not matrix:
      d_in = d_out = 1.0
    elif method == "kfac":
      d_in, d_out = r.fan_in_mult, 1.0 / r.fan_out_mult
    else:
      d_in = d_out = r.fan_in_mult / r.fan_out_mult
    damping_in.append(float(d_in))
    damping_out.append(float(d_out))
  p = Parametrization("mup", method, rules, mup.treedef)
  return SecondOrderSpec(p, jax.tree.unflatten(mup.treedef, damping_in), jax.tree.unflatten(mup.treedef, damping_out))


def kronecker_precondition(grad: jax.Array, a: jax.Array, b: jax.Array, *, damping_a: float | jax.Array,
                           damping_b: float | jax.Array, exponent: float = 1.0) -> jax.Array:
  """``(A + damping_a I)^{-exponent} G (B + damping_b I)^{-exponent}`` for a kernel gradient ``G`` of shape
  ``(fan_in, fan_out)`` (Flax layout), ``A`` ``(fan_in, fan_in)``, ``B`` ``(fan_out, fan_out)``.

  K-FAC (Martens & Grosse, arXiv:1503.05671) is ``exponent=1`` with ``A = E[h h^T]``, ``B = E[delta delta^T]``;
  Shampoo (Gupta et al., arXiv:1802.09568) is ``exponent=1/4`` with ``A = sum G G^T``, ``B = sum G^T G``; the
  form of Ishikawa & Karakida (arXiv:2312.12226, Eq. 3). ``exponent=1`` uses two symmetric positive-definite
  solves; other exponents an eigendecomposition (``jnp.linalg.eigh``, eigenvalues clipped at 0 before the damping).
  Jittable (``exponent`` is a Python float); computed in float32 at least, returned in ``grad``'s dtype.

  Raises:
    ValueError: shapes that do not match, a negative damping or a non-positive exponent.
  """
  grad, a, b = jnp.asarray(grad), jnp.asarray(a), jnp.asarray(b)
  if grad.ndim != 2 or a.shape != (grad.shape[0],) * 2 or b.shape != (grad.shape[1],) * 2:
    raise ValueError(f"kronecker_precondition needs grad (m, n), a (m, m), b (n, n); got grad {grad.shape}, "
                     f"a {a.shape}, b {b.shape}.")
  for name, v in (("damping_a", damping_a), ("damping_b", damping_b)):
    if not isinstance(v, jax.core.Tracer):
      check_non_negative(name, float(v))
  check_positive("exponent", exponent)
  dtype = jnp.promote_types(grad.dtype, jnp.float32)
  g, a, b = grad.astype(dtype), a.astype(dtype), b.astype(dtype)

  def apply_left(m, damping, x):
    eye = jnp.eye(m.shape[0], dtype=dtype)
    if exponent == 1.0:
      return jax.scipy.linalg.solve(m + damping * eye, x, assume_a="pos")
    w, v = jnp.linalg.eigh(m)
    return v @ (((jnp.maximum(w, 0.0) + damping) ** (-exponent))[:, None] * (v.T @ x))

  out = apply_left(a, damping_a, g)
  out = apply_left(b, damping_b, out.T).T
  return out.astype(grad.dtype)
