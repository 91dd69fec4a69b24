"""abc-parametrizations of Tensor Programs IV: SP, NTP, mean field and muP as exponents of the width, for SGD.

Yang & Hu, "Feature Learning in Infinite-Width Neural Networks" (ICML 2021, arXiv:2011.14522), Sec. 3 / Def. 3.1:
every layer ``l`` of a width-``n`` network computes with

    ``W^l = n^{-a_l} w^l``,   ``w^l_{ij} ~ N(0, n^{-2 b_l})``,   and trains ``w^l`` by SGD with LR ``eta n^{-c_l}``.

The paper uses one ``c`` for all layers; here ``c`` is per layer (per leaf), which keeps its abc-symmetry (Eq. 5)
layer by layer: since ``Delta W = n^{-a} Delta w = -eta n^{-c - 2a} dL/dW``, the effective init exponent ``a + b``
and the effective SGD learning-rate exponent ``c + 2a`` are all that matter, so

    ``(a_l, b_l, c_l) -> (a_l + theta, b_l - theta, c_l - 2 theta)``                     (:func:`abc_shift`)

changes neither the function at init nor its SGD trajectory (exactly, given the same noise; floating-point aside).

The tables (TP4, Sec. 3; ``L`` hidden layers; ``in`` is the first layer, ``hidden`` the ``L - 1`` middle ones,
``out`` the readout; a bias is a weight from a constant input 1, so it follows the input layer; ``c`` is listed per
layer):

======  =====================  ======================  =====================
kind    input (a, b, c)         hidden (a, b, c)         output (a, b, c)
======  =====================  ======================  =====================
sp      (0, 0, 0)              (0, 1/2, 0)              (0, 1/2, 0)
ntk     (0, 0, 0)              (1/2, 0, 0)              (1/2, 0, 0)
mf      (0, 0, -1)             (none: L = 1 only)       (1, 0, -1)
mup     (-1/2, 1/2, 0)         (0, 1/2, 0)              (1/2, 1/2, 0)
======  =====================  ======================  =====================

``sp`` is the standard parametrization with a width-independent LR, ``ntk`` Jacot et al.'s NTP, ``mf`` the
mean-field parametrization of a one-hidden-layer network (Mei et al.; Chizat & Bach: ``f = (1/n) sum_i v_i
phi(u_i x)`` with LR ``eta n``; the paper defines it for ``L = 1`` and a model with hidden layers is an error), and
``mup`` the maximal update parametrization (TP4 Eq. 7; by the symmetry it is the ``mup`` package's SGD rules, see
:func:`abc_mup_package_gauge`).

Width enters as the multiplier ``m = n / n_base`` against a base model (as everywhere in :mod:`paperlab.param`):
``n`` is the fan-out width for input, embedding, bias and norm leaves and the fan-in width for hidden and output
leaves. The constants the paper suppresses are fixed at the base model, which is SP there: a leaf's init std is
SP's std at the *base* shape times ``m^{-b}`` (a norm scale's init value ``1`` times ``m^{-b}``), its forward
multiplier ``m^{-a}`` and its LR multiplier ``m^{-c}``. So at the base shapes every kind is SP, ``sp`` is exactly
:func:`paperlab.param.parametrize`'s ``kind="sp"`` at every width, and widths change only what the exponents say.
Leaves with role ``fixed`` get ``(0, 0, 0)``.

The result is a :class:`paperlab.param.Parametrization` (inside :class:`AbcSpec`), so
:func:`~paperlab.param.init_params`, :func:`~paperlab.param.apply_multipliers` /
:func:`~paperlab.param.multiplied`, :func:`~paperlab.param.scale_by_param_lr` and
:func:`~paperlab.param.mu_sgd` apply it; nothing here runs under ``jit`` (it is host-side bookkeeping of Python
floats), and what it produces is used inside jitted code as constants.

TP4's tables are for SGD; under Adam the update ignores the gradient's scale and the symmetry becomes
``(a + theta, b - theta, c - theta)`` (TP5, arXiv:2203.03466, Sec. J.2.1), which :func:`abc_shift` supports with
``optimizer="adam"``; the kind tables themselves are SGD's only.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, NamedTuple

from paperlab._checks import check_choice, check_finite, check_non_negative, check_positive
from paperlab.param.parametrization import Parametrization, apply_multipliers, parametrize

PyTree = Any

__all__ = ["ABC_KINDS", "ABC_TABLES", "AbcSpec", "abc", "abc_shift", "abc_from_exponents", "apply_abc",
           "abc_mup_package_gauge"]

ABC_KINDS = ("sp", "ntk", "mf", "mup")
# (a, b, c) per layer type, TP4 Sec. 3 (see the module docstring's table).
ABC_TABLES: Mapping[str, Mapping[str, tuple[float, float, float] | None]] = {
    "sp": {"input": (0.0, 0.0, 0.0), "hidden": (0.0, 0.5, 0.0), "output": (0.0, 0.5, 0.0)},
    "ntk": {"input": (0.0, 0.0, 0.0), "hidden": (0.5, 0.0, 0.0), "output": (0.5, 0.0, 0.0)},
    "mf": {"input": (0.0, 0.0, -1.0), "hidden": None, "output": (1.0, 0.0, -1.0)},
    "mup": {"input": (-0.5, 0.5, 0.0), "hidden": (0.0, 0.5, 0.0), "output": (0.5, 0.5, 0.0)},
}
# which table row a role uses: a bias (and a norm scale, a gain on a width vector) is a weight from a constant input.
_ROW = {"input": "input", "embedding": "input", "bias": "input", "norm": "input", "hidden": "hidden",
        "output": "output"}


class AbcSpec(NamedTuple):
  """An abc-parametrization (Yang & Hu, arXiv:2011.14522, Def. 3.1) of one model.

  Attributes:
    kind: the table it came from (one of :data:`ABC_KINDS`), ``"custom"`` for :func:`abc_from_exponents`.
    exponents: ``{path: (a, b, c)}``.
    parametrization: the :class:`paperlab.param.Parametrization` with init stds ``std_base m^{-b}``, forward
      multipliers ``m^{-a}`` and LR multipliers ``m^{-c}`` (its ``optimizer`` is ``"sgd"``).
    base_rules: ``{path: LeafRule}`` of SP at the same shapes with base-shape stds: the constants (kept so that a
      shifted spec is rebuilt from the same constants).
  """

  kind: str
  exponents: Mapping[str, tuple[float, float, float]]
  parametrization: Parametrization
  base_rules: Mapping[str, Any]

  @property
  def a(self) -> dict[str, float]:
    return {p: e[0] for p, e in self.exponents.items()}

  @property
  def b(self) -> dict[str, float]:
    return {p: e[1] for p, e in self.exponents.items()}

  @property
  def c(self) -> dict[str, float]:
    return {p: e[2] for p, e in self.exponents.items()}

  @property
  def init_stds(self) -> PyTree:
    return self.parametrization.init_stds

  @property
  def multipliers(self) -> PyTree:
    return self.parametrization.multipliers

  @property
  def lr_multipliers(self) -> PyTree:
    return self.parametrization.lr_multipliers


def _width_mult(rule) -> float:
  return rule.fan_in_mult if rule.role in ("hidden", "output") else rule.fan_out_mult


def _build(kind: str, exponents: Mapping[str, tuple[float, float, float]], base_rules: Mapping[str, Any],
           treedef: Any) -> AbcSpec:
  rules = {}
  for path, r in base_rules.items():
    a, b, c = exponents[path]
    m = _width_mult(r)
    # r.init_std / r.init_mean are SP's at the base shape: the constants the paper suppresses.
    std, mean = r.init_std * m ** -b, r.init_mean * m ** -b
    rules[path] = dataclasses.replace(r, init_std=float(std), init_mean=float(mean), multiplier=float(m ** -a),
                                      lr_multiplier=float(m ** -c), init_scale=float(m ** -b))
  return AbcSpec(kind, dict(exponents), Parametrization(f"abc-{kind}", "sgd", rules, treedef), dict(base_rules))


def _constants(model_or_params: Any, base: Any, delta: Any, roles: Mapping[str, str] | None, init_gain: float,
               bias_gain: float, embedding_std: float):
  """SP's rules at the model's shapes (roles, fans, width multipliers) with the stds and means of the base shapes."""
  sp = parametrize(model_or_params, base, kind="sp", optimizer="sgd", delta=delta, roles=roles,
                   init_gain=init_gain, bias_gain=bias_gain, embedding_std=embedding_std)
  base_sp = parametrize(base, base, kind="sp", optimizer="sgd", delta=model_or_params if delta is None else delta,
                        roles={f"^{re.escape(p)}$": r.role for p, r in sp.rules.items()},
                        init_gain=init_gain, bias_gain=bias_gain, embedding_std=embedding_std)
  rules = {p: dataclasses.replace(r, init_std=base_sp.rules[p].init_std, init_mean=base_sp.rules[p].init_mean)
           for p, r in sp.rules.items()}
  return rules, sp.treedef


def abc(model_or_params: Any, base: Any, *, kind: str = "mup", delta: Any = None,
        roles: Mapping[str, str] | None = None, init_gain: float = 1.0, bias_gain: float = 0.0,
        embedding_std: float = 1.0) -> AbcSpec:
  """The abc-parametrization ``kind`` of a model: per-leaf exponents ``(a, b, c)`` and their numbers.

  Yang & Hu, "Feature Learning in Infinite-Width Neural Networks" (arXiv:2011.14522), Def. 3.1 and Sec. 3:
  ``W = n^{-a} w``, ``w ~ N(0, n^{-2b})``, SGD learning rate ``eta n^{-c}``, with the tables of the module
  docstring for ``"sp"``, ``"ntk"``, ``"mf"`` (one hidden layer only) and ``"mup"``. Roles come from
  :func:`paperlab.param.infer_roles` (shapes against ``base``, overridable by ``roles``); width is ``m = n /
  n_base`` and the constants are SP's at the base shapes (module docstring).

  Args:
    model_or_params: the model (``nnx.Module``, ``nnx.State`` or parameter pytree, arrays or shapes).
    base: the base model (same architecture, base width); every kind is SP at its shapes.
    kind: one of :data:`ABC_KINDS`.
    delta: a model of another width marking the width dimensions (when the model has the base shapes).
    roles: ``{regex: role}`` overrides of the inferred roles.
    init_gain: ``sigma`` of SP's weight std ``sigma / sqrt(fan_in)`` (1: LeCun normal, Flax's default).
    bias_gain: SP's bias std ``bias_gain / sqrt(fan_in)`` (0: Flax's zeros).
    embedding_std: SP's std of ``embedding`` leaves.

  Returns:
    An :class:`AbcSpec`; train it with ``paperlab.param.mu_sgd(eta, spec.parametrization)`` on a loss that
    computes with :func:`paperlab.param.multiplied` (or :func:`apply_abc`).

  Raises:
    ValueError: an unknown kind or role, ``kind="mf"`` on a model with hidden (width x width) layers (naming the
      path), or the errors of :func:`paperlab.param.parametrize`.
  """
  check_choice("kind", kind, ABC_KINDS)
  check_positive("init_gain", init_gain)
  check_non_negative("bias_gain", bias_gain)
  check_non_negative("embedding_std", embedding_std)
  base_rules, treedef = _constants(model_or_params, base, delta, roles, init_gain, bias_gain, embedding_std)
  exponents = {}
  for path, r in base_rules.items():
    row = _ROW.get(r.role)
    if row is None:  # fixed: width-free, SP at every width
      exponents[path] = (0.0, 0.0, 0.0)
      continue
    e = ABC_TABLES[kind][row]
    if e is None:
      raise ValueError(f"kind={kind!r} is defined for networks with one hidden layer (TP4 Sec. 3), but parameter "
                       f"{path!r} is a {r.role} (width x width) layer; use 'mup', its extension to depth.")
    exponents[path] = tuple(float(x) for x in e)
  return _build(kind, exponents, base_rules, treedef)


def abc_from_exponents(model_or_params: Any, base: Any, exponents: Mapping[str, tuple[float, float, float]], *,
                       delta: Any = None, roles: Mapping[str, str] | None = None, init_gain: float = 1.0,
                       bias_gain: float = 0.0, embedding_std: float = 1.0) -> AbcSpec:
  """An abc-parametrization from explicit exponents ``{regex: (a, b, c)}`` (first regex that ``re.search``-es a
  path wins; leaves no regex selects get ``(0, 0, 0)``, SP). Same constants and width convention as :func:`abc`
  (Yang & Hu, arXiv:2011.14522, Def. 3.1).

  Raises:
    ValueError: a regex that selects nothing, an exponent triple that is not three finite numbers.
  """
  base_rules, treedef = _constants(model_or_params, base, delta, roles, init_gain, bias_gain, embedding_std)
  compiled = []
  for regex, e in exponents.items():
    if len(tuple(e)) != 3:
      raise ValueError(f"exponents[{regex!r}] must be (a, b, c), got {e!r}.")
    for name, v in zip("abc", e):
      check_finite(f"exponents[{regex!r}].{name}", v)
    rx = re.compile(regex)
    if not any(rx.search(p) for p in base_rules):
      raise ValueError(f"exponents: {regex!r} selects no parameter; paths are {list(base_rules)[:6]}...")
    compiled.append((rx, tuple(float(x) for x in e)))
  table = {p: next((e for rx, e in compiled if rx.search(p)), (0.0, 0.0, 0.0)) for p in base_rules}
  return _build("custom", table, base_rules, treedef)


def abc_shift(spec: AbcSpec, theta: float | Mapping[str, float], *, optimizer: str = "sgd") -> AbcSpec:
  """The abc-symmetry (Yang & Hu, arXiv:2011.14522, Eq. 5): ``(a, b, c) -> (a + theta, b - theta, c - 2 theta)``.

  A shifted spec computes the same function at init (``W = n^{-a-b}`` times the same noise) and follows the same
  SGD trajectory of ``W``: only ``a + b`` and ``c + 2a`` matter. ``optimizer="adam"`` shifts ``c`` by ``-theta``
  instead (Adam's update does not scale with the gradient; TP5, arXiv:2203.03466, Sec. J.2.1), which keeps Adam's
  trajectory (up to its ``eps``).

  Args:
    spec: from :func:`abc`.
    theta: one shift for every leaf, or ``{regex: theta}`` (first match wins; unmatched leaves are not shifted).
    optimizer: ``"sgd"`` (TP4) or ``"adam"``.

  Raises:
    ValueError: a non-finite theta, an unknown optimizer, or a regex that selects nothing.
  """
  check_choice("optimizer", optimizer, ("sgd", "adam"))
  c_factor = 2.0 if optimizer == "sgd" else 1.0
  if isinstance(theta, Mapping):
    compiled = []
    for regex, t in theta.items():
      check_finite(f"theta[{regex!r}]", t)
      rx = re.compile(regex)
      if not any(rx.search(p) for p in spec.exponents):
        raise ValueError(f"theta: {regex!r} selects no parameter; paths are {list(spec.exponents)[:6]}...")
      compiled.append((rx, float(t)))
    shift = {p: next((t for rx, t in compiled if rx.search(p)), 0.0) for p in spec.exponents}
  else:
    check_finite("theta", theta)
    shift = {p: float(theta) for p in spec.exponents}
  exponents = {p: (a + shift[p], b - shift[p], c - c_factor * shift[p]) for p, (a, b, c) in spec.exponents.items()}
  out = _build(spec.kind, exponents, spec.base_rules, spec.parametrization.treedef)
  return out._replace(parametrization=out.parametrization._replace(optimizer=optimizer))


def abc_mup_package_gauge(spec: AbcSpec) -> AbcSpec:
  """TP4's muP shifted to the gauge of TP5 Table 8 / the ``mup`` package's ``MuSGD``: ``theta = 1/2`` on every
  input-like leaf (input, embedding, bias, norm) and on the readout, none on hidden layers -- input ``(0, 0, -1)``
  (LR ``eta m``), hidden ``(0, 1/2, 0)``, readout ``(1, 0, -1)`` (multiplier ``1/m``, LR ``eta m``), the rules of
  :func:`paperlab.param.parametrize` ``(kind="mup", optimizer="sgd")`` (Yang & Hu, arXiv:2011.14522, Eq. 5)."""
  rows = {p: _ROW.get(r.role) for p, r in spec.base_rules.items()}
  exponents = {p: ((a + 0.5, b - 0.5, c - 1.0) if rows[p] in ("input", "output") else (a, b, c))
               for p, (a, b, c) in spec.exponents.items()}
  return _build(spec.kind, exponents, spec.base_rules, spec.parametrization.treedef)


def apply_abc(apply_fn: Callable[..., Any], spec: AbcSpec | Parametrization) -> Callable[..., Any]:
  """``params, *args -> apply_fn(n^{-a} w, *args)``: a pure apply function that computes with the effective
  weights ``W = n^{-a} w`` (:func:`paperlab.param.apply_multipliers`), so ``jax.grad`` of a loss built on it
  differentiates the stored ``w`` (Yang & Hu, arXiv:2011.14522, Def. 3.1). Jittable and vmappable."""
  p = spec.parametrization if isinstance(spec, AbcSpec) else spec

  def wrapped(params: PyTree, *args: Any, **kwargs: Any) -> Any:
    return apply_fn(apply_multipliers(params, p), *args, **kwargs)

  return wrapped
