"""WEMoE: merging fine-tuned models into a weight-ensembling mixture of experts with input-dependent routing.

Tang et al., "Merging Multi-Task Models via Weight-Ensembling Mixture of Experts" (ICML 2024, arXiv:2402.00433).
Every parameter except the upscaled layers (the Transformer MLPs in the paper) is merged by task arithmetic,
``theta = theta_0 + lam * sum_t tau_t``. Each upscaled linear layer keeps the pre-trained weights ``W_0`` and the
task vectors ``tau_t = W_t - W_0`` and computes, for a sample with layer input ``h`` (Eq. 4-5),

    W(h) = W_0 + sum_t r_t(h) tau_t,      r(h) = R(h) in R^T,

where the router ``R`` is a small MLP whose output starts at ``init_lambda`` for every task (so the initial model is
task arithmetic with ``lam = init_lambda``). Only the routers are trained, by test-time adaptation that minimizes
the Shannon entropy of the predictions on unlabeled test inputs (Eq. 6, as in AdaMerging).

The routed weights are never materialized per sample: a linear layer is linear in its weights, so
``h W(h) = h W_0 + sum_t r_t(h) (h tau_t)`` exactly (:func:`wemoe_dense`).

Everything here is pure and jittable; parameters are plain pytrees and the routers train with any optax optimizer.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from paperlab._checks import check_choice, check_range
from paperlab._tree import check_same_structure, path_str
from paperlab.merge.regmean import _merge

__all__ = [
    "WEMoEParams", "router_init", "router_apply", "wemoe_dense", "wemoe_init", "wemoe_apply",
    "wemoe_static_params", "prediction_entropy", "wemoe_tta_step",
]

PyTree = Any
_ROUTED_CLASSES: dict[type, type] = {}


class WEMoEParams(NamedTuple):
  """Parameters of a weight-ensembling MoE model (a pytree).

  Attributes:
    merged: the model's parameter pytree: task arithmetic everywhere except the upscaled layers, which hold the
      pre-trained weights ``W_0`` (and bias).
    experts: upscaled layer path (``"hidden/1"``) -> ``{"kernel": (T, in, out), "bias": (T, out)}`` task vectors.
    routers: upscaled layer path -> router parameters (:func:`router_init`); the only trained part.
  """

  merged: PyTree
  experts: dict[str, dict[str, jax.Array]]
  routers: dict[str, dict]


def router_init(key: jax.Array, in_features: int, num_experts: int, *, hidden_layers: int = 2,
                init_lambda: float = 0.3) -> dict:
  """Router of one WEMoE layer, initialised so that it outputs ``init_lambda`` for every expert.

  Tang et al. (arXiv:2402.00433), Sec. 3.2, with the gate of the official code (FusionBench ``we_moe``):
  ``hidden_layers=0`` is an input-independent vector of routing weights; ``1`` a linear map; ``2`` (paper default)
  ``Linear(in, 2T) -> ReLU -> Linear(2T, T)``. Weights are ``N(0, 0.01^2)``, the last bias is ``init_lambda``
  and the hidden bias is 0, so the initial routing weights are ``init_lambda`` up to ``O(0.01^2 |h|)``.

  Args:
    key: ``jax.random`` key.
    in_features: width of the layer input the router reads.
    num_experts: number of task vectors ``T``.
    hidden_layers: 0, 1 or 2 (the paper's ``router_hidden_layers``).
    init_lambda: initial routing weight of every expert (paper: 0.3).

  Returns:
    ``{"out": {"kernel", "bias"}}`` plus ``{"hidden": {"kernel", "bias"}}`` for 2 layers; ``{"out": {"bias"}}``
    for 0 layers.
  """
  check_choice("hidden_layers", hidden_layers, (0, 1, 2))
  if int(in_features) < 1 or int(num_experts) < 1:
    raise ValueError(f"in_features and num_experts must be positive, got {in_features!r} and {num_experts!r}.")
  bias = jnp.full((num_experts,), init_lambda, jnp.float32)
  if hidden_layers == 0:
    return {"out": {"bias": bias}}
  k1, k2 = jax.random.split(key)
  if hidden_layers == 1:
    return {"out": {"kernel": 0.01 * jax.random.normal(k1, (in_features, num_experts)), "bias": bias}}
  width = 2 * num_experts
  return {"hidden": {"kernel": 0.01 * jax.random.normal(k1, (in_features, width)), "bias": jnp.zeros((width,))},
          "out": {"kernel": 0.01 * jax.random.normal(k2, (width, num_experts)), "bias": bias}}


def router_apply(router: Mapping[str, Any], h: jax.Array) -> jax.Array:
  """Routing weights ``r(h)`` of shape ``h.shape[:-1] + (T,)`` (raw outputs, no softmax, as in the paper)."""
  out = router["out"]
  if "kernel" not in out:
    return jnp.broadcast_to(out["bias"], h.shape[:-1] + out["bias"].shape).astype(h.dtype)
  if "hidden" in router:
    h = jax.nn.relu(h @ router["hidden"]["kernel"] + router["hidden"]["bias"])
  return h @ out["kernel"] + out["bias"]


def wemoe_dense(x: jax.Array, base: Mapping[str, jax.Array], experts: Mapping[str, jax.Array],
                weights: jax.Array) -> jax.Array:
  """A linear layer with routed weights: ``x (W_0 + sum_t w_t tau_t) + b_0 + sum_t w_t beta_t``.

  Tang et al. (arXiv:2402.00433), Eq. 5, computed without forming per-sample weights (exact, since the layer is
  linear in its weights): ``x W_0 + b_0 + sum_t w_t (x tau_t + beta_t)``.

  Args:
    x: inputs ``(..., in)``.
    base: ``{"kernel": (in, out), "bias": (out,)}`` (bias optional).
    experts: ``{"kernel": (T, in, out), "bias": (T, out)}`` task vectors (bias optional, present iff in ``base``).
    weights: routing weights broadcastable to ``x.shape[:-1] + (T,)`` (per example, per token, or shared).

  Returns:
    ``(..., out)``.
  """
  kernel, tau = base["kernel"], experts["kernel"]
  chex.assert_rank([kernel, tau], [2, 3])
  if tau.shape[1:] != kernel.shape or x.shape[-1] != kernel.shape[0]:
    raise ValueError(f"wemoe_dense: x {x.shape}, base kernel {kernel.shape} and expert kernels {tau.shape} must "
                     "agree as (..., in), (in, out), (T, in, out).")
  weights = jnp.broadcast_to(weights, x.shape[:-1] + (tau.shape[0],))
  per_expert = jnp.einsum("...i,tio->...to", x, tau)
  if "bias" in experts:
    per_expert = per_expert + experts["bias"]
  y = x @ kernel + jnp.einsum("...t,...to->...o", weights, per_expert)
  return y + base["bias"] if "bias" in base else y


def _layer_paths(params: PyTree) -> list[str]:
  flat = {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  return [k[: -len("/kernel")] for k, v in flat.items() if k.endswith("/kernel") and jnp.ndim(v) == 2]


def wemoe_init(key: jax.Array, base: PyTree, finetuned: Sequence[PyTree], layers: str, *, lam: float = 0.3,
               init_lambda: float = 0.3, router_hidden_layers: int = 2,
               integer_leaves: str | Callable = "error") -> WEMoEParams:
  """Upscale ``base`` and its fine-tunes into a WEMoE model (Tang et al., arXiv:2402.00433, Sec. 3).

  Leaves outside the upscaled layers are merged by task arithmetic ``theta_0 + lam * sum_t (theta_t - theta_0)``;
  each upscaled linear layer keeps ``W_0`` and stores the task vectors ``tau_t``, with a fresh router.

  Args:
    key: ``jax.random`` key for the routers.
    base: pre-trained parameters (plain dict, layout of ``paperlab.train.make_init``).
    finetuned: the ``T >= 1`` fine-tuned parameter pytrees (same structure and shapes).
    layers: regex, full-matched against layer paths (``"hidden/1"``, ``"blocks/0/fc1"``), selecting the linear
      layers (2-D ``kernel`` leaves) to upscale; the paper upscales every Transformer MLP
      (``r"blocks/\\d+/fc[12]"`` for ``paperlab.models.CharTransformer``).
    lam: task-arithmetic scale of the other parameters (paper: 0.3).
    init_lambda: initial routing weight (paper: 0.3).
    router_hidden_layers: 0, 1 or 2 (paper: 2).
    integer_leaves: integer/bool leaves are never merged: equal in base and fine-tunes -> kept, different ->
      ``ValueError`` naming the path; or ``"first"``, ``"last"``, ``"base"`` or a callable (see
      :mod:`paperlab.merge.averaging`).

  Returns:
    :class:`WEMoEParams`.
  """
  finetuned = list(finetuned)
  if not finetuned:
    raise ValueError("finetuned must contain at least one model, got an empty sequence.")
  check_same_structure([base] + finetuned, ["base"] + [f"finetuned[{i}]" for i in range(len(finetuned))])
  check_range("lam", lam)
  check_range("init_lambda", init_lambda)
  rx = re.compile(layers)
  chosen = [p for p in _layer_paths(base) if rx.fullmatch(p)]
  if not chosen:
    raise ValueError(f"layers={layers!r} matches no linear layer; layers with a 2-D kernel: {_layer_paths(base)}.")
  leaf_names = {f"{p}/{k}" for p in chosen for k in ("kernel", "bias")}

  def ta_leaf(path, b, *fs):
    if path_str(path) in leaf_names:
      return b
    delta = sum(f.astype(jnp.float32) - b.astype(jnp.float32) for f in fs)
    return (b.astype(jnp.float32) + lam * delta).astype(b.dtype)

  from paperlab.merge.averaging import _integer_leaves, _model_names, _put_integer_leaves

  ints = _integer_leaves([base, *finetuned], _model_names(len(finetuned), "finetuned", "base"), integer_leaves,
                         has_base=True)
  merged = _put_integer_leaves(jax.tree_util.tree_map_with_path(ta_leaf, base, *finetuned), ints)
  flat_b = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(base)[0]}
  flat_f = [{path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(f)[0]} for f in finetuned]
  experts, routers = {}, {}
  keys = jax.random.split(key, len(chosen))
  for k, p in zip(keys, chosen):
    leaves = {n: jnp.stack([f[f"{p}/{n}"] - flat_b[f"{p}/{n}"] for f in flat_f])
              for n in ("kernel", "bias") if f"{p}/{n}" in flat_b}
    experts[p] = leaves
    routers[p] = router_init(k, flat_b[f"{p}/kernel"].shape[0], len(finetuned), hidden_layers=router_hidden_layers,
                             init_lambda=init_lambda)
  return WEMoEParams(merged, experts, routers)


def _routed_class(cls: type) -> type:
  """A subclass of ``cls`` (an ``nnx.Linear``) computing :func:`wemoe_dense` with its router's weights."""
  if cls not in _ROUTED_CLASSES:
    def __call__(self, x):
      r = router_apply(self._wemoe_router, x)
      if self._wemoe_routing == "example" and x.ndim > 2:
        r = jnp.mean(r, axis=tuple(range(1, x.ndim - 1)), keepdims=True)
      self._wemoe_sink[self._wemoe_path] = r
      base = {"kernel": self.kernel[...]}
      if self.bias is not None:
        base["bias"] = self.bias[...]
      return wemoe_dense(x, base, self._wemoe_experts, r)

    _ROUTED_CLASSES[cls] = type(f"WEMoE{cls.__name__}", (cls,), {"__call__": __call__})
  return _ROUTED_CLASSES[cls]


def wemoe_apply(graphdef: nnx.GraphDef, params: WEMoEParams, x: Any, *, model_state: PyTree | None = None,
                routing: str = "example", return_weights: bool = False):
  """Run a Flax NNX model with its upscaled layers routed per sample (Tang et al., arXiv:2402.00433, Eq. 5).

  Args:
    graphdef: static half of the split model (``paperlab.train.make_init``).
    params: :class:`WEMoEParams` from :func:`wemoe_init`.
    x: model input.
    model_state: non-parameter state (the model runs in eval mode).
    routing: ``"example"`` (paper: the router's outputs are averaged over the tokens of a sample) or ``"token"``
      (every position gets its own weights).
    return_weights: also return ``{layer: routing weights}``.

  Returns:
    The model output, or ``(output, weights)``. Pure and jittable with ``graphdef`` static.
  """
  check_choice("routing", routing, ("example", "token"))
  model = _merge(graphdef, params.merged, model_state)
  modules = {"/".join(str(p) for p in path): m for path, m in nnx.iter_graph(model)}
  sink: dict[str, jax.Array] = {}
  for name in params.experts:
    module = modules.get(name)
    if not isinstance(module, nnx.Linear):
      raise ValueError(f"upscaled layer {name!r} is not an nnx.Linear of the model (found {type(module).__name__}).")
    module.__class__ = _routed_class(type(module))
    for attr, value in (("_wemoe_router", params.routers[name]), ("_wemoe_experts", params.experts[name]),
                        ("_wemoe_routing", routing), ("_wemoe_sink", sink), ("_wemoe_path", name)):
      object.__setattr__(module, attr, value)
  out = model(x)
  return (out, dict(sink)) if return_weights else out


def wemoe_static_params(params: WEMoEParams, weights: Mapping[str, Any] | float | jax.Array) -> PyTree:
  """The ordinary parameters obtained by fixing every upscaled layer's routing weights.

  ``W = W_0 + sum_t w_t tau_t``; with ``weights = lam`` (a scalar for every expert) this is exactly task
  arithmetic with ``lam`` (Tang et al., arXiv:2402.00433: a router frozen at ``init_lambda`` gives the TA model).

  Args:
    params: :class:`WEMoEParams`.
    weights: a scalar or ``(T,)`` array used for every layer, or ``{layer: (T,)}``.
  """
  def w_of(name):
    w = weights[name] if isinstance(weights, Mapping) else weights
    return jnp.broadcast_to(jnp.asarray(w, jnp.float32), (params.experts[name]["kernel"].shape[0],))

  fixed = {}
  for name, leaves in params.experts.items():
    w = w_of(name)
    for n, tau in leaves.items():
      fixed[f"{name}/{n}"] = jnp.tensordot(w, tau.astype(jnp.float32), axes=1)

  def upd(path, v):
    d = fixed.get(path_str(path))
    return v if d is None else (v.astype(jnp.float32) + d).astype(v.dtype)

  return jax.tree_util.tree_map_with_path(upd, params.merged)


def prediction_entropy(logits: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
  """Per-example Shannon entropy ``-sum_c p_c log p_c`` of ``softmax(logits)`` over the last axis.

  The test-time adaptation objective of WEMoE (Tang et al., arXiv:2402.00433, Eq. 6) and AdaMerging
  (arXiv:2310.02575, Eq. 3). ``where`` masks examples (entropy 0 where False), like ``optax.losses``.
  """
  chex.assert_type(logits, float)
  logp = jax.nn.log_softmax(logits, axis=-1)
  ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  return ent if where is None else jnp.where(where, ent, 0.0)


def wemoe_tta_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, *,
                   model_state: PyTree | None = None, routing: str = "example",
                   loss_fn: Callable[[WEMoEParams, Any], jax.Array] | None = None
                   ) -> Callable[[WEMoEParams, optax.OptState, Any], tuple[WEMoEParams, optax.OptState, jax.Array]]:
  """Test-time adaptation step of WEMoE: one optimizer step on the routers only.

  Tang et al. (arXiv:2402.00433), Sec. 3.3, Eq. 6: ``min_R E_x H(f(x; theta(R)))`` over unlabeled test inputs
  ``x``; the merged and expert weights stay frozen. The paper trains with Adam (lr 1e-3).

  Args:
    graphdef: static half of the split model.
    optimizer: any optax transformation; initialise its state with ``optimizer.init(params.routers)``.
    model_state: non-parameter state (eval mode).
    routing: see :func:`wemoe_apply`.
    loss_fn: ``(params, batch) -> scalar`` replacing the default objective, the mean
      :func:`prediction_entropy` of ``wemoe_apply(graphdef, params, batch)`` (e.g. to use one classification
      head per task, as the paper does).

  Returns:
    ``step(params, opt_state, batch) -> (params, opt_state, loss)``, pure (jit it, scan it).
  """
  check_choice("routing", routing, ("example", "token"))
  if loss_fn is None:
    def loss_fn(params, x):
      out = wemoe_apply(graphdef, params, x, model_state=model_state, routing=routing)
      return jnp.mean(prediction_entropy(out))

  def step(params: WEMoEParams, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda r: loss_fn(params._replace(routers=r), batch))(params.routers)
    updates, opt_state = optimizer.update(grads, opt_state, params.routers)
    return params._replace(routers=optax.apply_updates(params.routers, updates)), opt_state, loss

  return step
