"""GaLore parity with ``pytorch_optimizer.GaLore`` (projection type ``std``): the projector spans the same
subspace, and 100 optimizer steps match when the subspace is computed once (``update_proj_gap`` longer than the
run, so the sign ambiguity of singular vectors cannot enter through a refresh)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from pytorch_optimizer import GaLore
from pytorch_optimizer.optimizer.utils.galore import GaLoreProjector

from paperlab import optim


@pytest.mark.parametrize("shape", [(24, 10), (10, 24)])
def test_galore_basis_spans_pytorch_optimizer_projector(shape):
  g = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  proj = GaLoreProjector(rank=3, update_proj_gap=10, projection_type="std")
  low_t = proj.project(torch.from_numpy(g), 1)
  basis = optim.galore_basis(jnp.asarray(g), 3)
  ortho = proj.ortho_matrix.numpy()
  ortho = ortho.T if shape[0] >= shape[1] else ortho  # torch keeps Vh rows for right projection
  np.testing.assert_allclose(np.asarray(basis @ basis.T), ortho @ ortho.T, atol=1e-5)
  back_t = proj.project_back(low_t).numpy()
  back = optim.from_subspace(optim.to_subspace(jnp.asarray(g), basis), basis, shape)
  np.testing.assert_allclose(np.asarray(back), back_t, rtol=1e-4, atol=1e-5)


def test_galore_adam_matches_pytorch_optimizer_over_100_steps():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 20)).astype(np.float32)
  y = rng.normal(size=(64, 12)).astype(np.float32)
  w0 = (0.1 * rng.normal(size=(20, 12))).astype(np.float32)
  lr, steps = 1e-2, 100

  opt = optim.galore(lr, rank=4, update_proj_gap=1000, scale=1.0, eps=1e-8)
  w = jnp.asarray(w0)
  state = opt.init(w)

  @jax.jit
  def step(w, s):
    g = jax.grad(lambda w: jnp.mean(jnp.square(jnp.asarray(x) @ w - jnp.asarray(y))))(w)
    u, s = opt.update(g, s, w)
    return optax.apply_updates(w, u), s

  for _ in range(steps):
    w, state = step(w, state)

  wt = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  topt = GaLore([{"params": [wt], "rank": 4, "update_proj_gap": 1000, "scale": 1.0, "projection_type": "std"}],
                lr=lr, eps=1e-8)
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  for _ in range(steps):
    topt.zero_grad()
    torch.mean(torch.square(xt @ wt - yt)).backward()
    topt.step()
  ref = wt.detach().numpy()
  rel = np.linalg.norm(np.asarray(w) - ref) / np.linalg.norm(ref)
  assert rel <= 1e-5, rel
  assert np.linalg.norm(ref - w0) / np.linalg.norm(w0) > 0.05


# --------------------------------------------------------------------------------------------------------- FRUGAL
# Transcription of the official FRUGAL update: github.com/philip-zmushko/FRUGAL at commit
# c7ebe4c242f7908e036c287e3a10512a84634648 (read from the fork hungquangbui02022003/FRUGAL, which keeps that commit):
# frugal/proj_optimizer_templates.py (ProjOptimizer.step, _update_states_if_necessary, GaloreOptimizer._update_states
# and _proj_params_update), frugal/adamw.py (AdamW._init_state, _compute_update) and frugal/galore_projector.py
# (proj_side='std', proj_type='svd'). Regular (non-projected) parameters get plain AdamW that is never reset.


class _OfficialGaloreProjector:
  def __init__(self, density, shape):
    self.side = "right" if shape[0] >= shape[1] else "left"
    self.rank = round((shape[1] if self.side == "right" else shape[0]) * density)

  def update_proj(self, g):
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    self.ortho = vh[:self.rank, :] if self.side == "right" else u[:, :self.rank]

  def project_down(self, x):
    return x @ self.ortho.t() if self.side == "right" else self.ortho.t() @ x

  def project_up(self, x):
    return x @ self.ortho if self.side == "right" else self.ortho @ x


class _OfficialFrugalAdamW:
  """``GaloreAdamW(param_groups, ...)`` with ``inactive_update_rule='sign_sgd'``, ``reset_statistics=True``."""

  def __init__(self, regular, projected, lr, density, update_gap, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    self.regular, self.projected = regular, projected
    self.lr, self.density, self.gap, self.wd, self.betas, self.eps = lr, density, update_gap, weight_decay, betas, eps
    self.state = {}

  def _init_state(self, state, example=None):
    state["step"] = 0
    if "exp_avg" in state and example is None:
      state["exp_avg"].zero_()
      state["exp_avg_sq"].zero_()
    else:
      state["exp_avg"] = torch.zeros_like(example)
      state["exp_avg_sq"] = torch.zeros_like(example)

  def _compute_update(self, grad, state, lr):
    b1, b2 = self.betas
    state["exp_avg"].mul_(b1).add_(grad, alpha=1 - b1)
    state["exp_avg_sq"].mul_(b2).addcmul_(grad, grad, value=1 - b2)
    denom = state["exp_avg_sq"].sqrt() / math.sqrt(1 - b2 ** state["step"]) + self.eps
    return state["exp_avg"] / denom * (-lr / (1 - b1 ** state["step"]))

  @torch.no_grad()
  def step(self):
    for p in self.regular:
      state = self.state.setdefault(id(p), {})
      if not state:
        self._init_state(state, example=p)
      p.mul_(1 - self.lr * self.wd)
      state["step"] += 1
      p.add_(self._compute_update(p.grad, state, self.lr))
    first = self.state.get(id(self.projected[0]), {})
    if "step" not in first or first["step"] % self.gap == 0:  # _update_states_if_necessary
      for p in self.projected:
        state = self.state.setdefault(id(p), {})
        if "projector" not in state:
          state["projector"] = _OfficialGaloreProjector(self.density, p.grad.shape)
        state["projector"].update_proj(p.grad)
        if len(state) == 1:
          self._init_state(state, example=state["projector"].project_down(p.grad))
        else:
          self._init_state(state)
    for p in self.projected:
      state = self.state[id(p)]
      p.mul_(1 - self.lr * self.wd)
      state["step"] += 1
      down = state["projector"].project_down(p.grad)
      update = state["projector"].project_up(self._compute_update(down, state, self.lr))
      inactive = p.grad - state["projector"].project_up(down)
      p.add_(update - self.lr * inactive.sign())


def _mlp_problem(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"embed": (16, 12), "hidden/kernel": (12, 24), "hidden/bias": (24,), "mid/kernel": (24, 10),
            "head/kernel": (10, 6), "head/bias": (6,)}
  init = {k: (0.3 * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}
  x = rng.normal(size=(32, 16)).astype(np.float32)
  y = rng.normal(size=(32, 6)).astype(np.float32)
  return init, x, y


def _mlp_loss(p, x, y, lib):
  h = lib.tanh(x @ p["embed"])
  h = lib.tanh(h @ p["hidden/kernel"] + p["hidden/bias"])
  out = (h @ p["mid/kernel"]) @ p["head/kernel"] + p["head/bias"]
  return ((out - y) ** 2).mean()


def _nest(flat):
  return {"embed": flat["embed"], "hidden": {"kernel": flat["hidden/kernel"], "bias": flat["hidden/bias"]},
          "mid": {"kernel": flat["mid/kernel"]}, "head": {"kernel": flat["head/kernel"], "bias": flat["head/bias"]}}


def _flat(nested):
  return {"embed": nested["embed"], "hidden/kernel": nested["hidden"]["kernel"],
          "hidden/bias": nested["hidden"]["bias"], "mid/kernel": nested["mid"]["kernel"],
          "head/kernel": nested["head"]["kernel"], "head/bias": nested["head"]["bias"]}


def test_frugal_matches_the_official_update_over_45_steps():
  """Refreshes at steps 0, 10, 20, 30, 40 reset only the projected matrices (``hidden``, ``mid``); the embedding
  and head (matched by the default ``FULL_RANK_PATTERN``, full rank as in the official ``prepare_proj_params``) and
  the biases keep one uninterrupted AdamW. float32 on both sides; tolerance 2e-5 relative to the parameter norm."""
  init, x, y = _mlp_problem()
  lr, density, gap, wd, steps = 1e-2, 0.25, 10, 0.01, 45

  opt = optim.frugal(lr, density=density, update_proj_gap=gap, weight_decay=wd)
  params = _nest({k: jnp.asarray(v) for k, v in init.items()})
  state = opt.init(params)
  basis = state[0].basis  # chain(frugal, decay, lr)
  assert basis["embed"] is None and basis["head"]["kernel"] is None
  assert basis["hidden"]["kernel"] is not None and basis["mid"]["kernel"] is not None

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda q: _mlp_loss(_flat(q), jnp.asarray(x), jnp.asarray(y), jnp))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(steps):
    params, state = step(params, state)

  tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in init.items()}
  projected = [tp["hidden/kernel"], tp["mid/kernel"]]
  regular = [v for k, v in tp.items() if k not in ("hidden/kernel", "mid/kernel")]
  topt = _OfficialFrugalAdamW(regular, projected, lr, density, gap, wd)
  xt, yt = torch.from_numpy(x), torch.from_numpy(y)
  for _ in range(steps):
    for v in tp.values():
      v.grad = None
    _mlp_loss(tp, xt, yt, torch).backward()
    topt.step()

  ours = _flat(params)
  for k, v in tp.items():
    ref = v.detach().numpy()
    rel = np.linalg.norm(np.asarray(ours[k]) - ref) / np.linalg.norm(ref)
    assert rel <= 2e-5, (k, rel)
    assert np.linalg.norm(ref - init[k]) / np.linalg.norm(init[k]) > 0.02, k  # the run moved every leaf


# ------------------------------------------------------------------------------------------ Online Subspace Descent
# Transcription of the official update: github.com/kyleliang919/Online-Subspace-Descent at commit
# e694775980036a62d2019957f075ff2c5c1c68ad, galore_torch/galore_projector.py (GaLoreProjector.project/project_back,
# proj_type='continuous': P_0 from the SVD, then torch.optim.AdamW on P at lr 1/update_proj_gap, stepped in
# project_back after the gradient was projected with the current P) and galore_torch/adamw.py (the main AdamW:
# step_size = lr sqrt(1 - b2^t) / (1 - b1^t), denom = sqrt(v) + eps, scale in project_back).


class _OfficialOSDProjector:
  def __init__(self, rank, update_proj_gap, scale):
    self.rank, self.gap, self.scale, self.ortho = rank, update_proj_gap, scale, None

  def project(self, g):
    right = g.shape[0] >= g.shape[1]
    if self.ortho is None:
      u, _, vh = torch.linalg.svd(g, full_matrices=False)
      self.ortho = (vh[:self.rank, :] if right else u[:, :self.rank]).clone()
      self.opt = torch.optim.AdamW([self.ortho], lr=1 / self.gap)
    else:
      with torch.enable_grad():
        self.ortho.requires_grad = True
        self.ortho.grad = None
        gn = g / torch.norm(g)
        if right:
          loss = torch.norm(gn @ (self.ortho.t() @ self.ortho) - gn) ** 2
        else:
          loss = torch.norm((self.ortho @ self.ortho.t()) @ gn - gn) ** 2
        loss.backward()
        self.ortho.requires_grad = False
    return g @ self.ortho.t() if right else self.ortho.t() @ g

  def project_back(self, low):
    full = low @ self.ortho if low.shape[0] >= low.shape[1] else self.ortho @ low
    self.opt.step()
    self.ortho.grad = None
    return full * self.scale


def _official_osd_run(init, grad_fn, projected, lr, rank, gap, scale, steps, betas=(0.9, 0.999), eps=1e-8):
  params = {k: torch.from_numpy(v.copy()) for k, v in init.items()}
  state = {k: {"step": 0} for k in params}
  for _ in range(steps):
    grads = grad_fn(params)
    with torch.no_grad():
      for k, p in params.items():
        st, g = state[k], grads[k]
        if k in projected:
          st.setdefault("projector", _OfficialOSDProjector(rank, gap, scale))
          g = st["projector"].project(g)
        if "exp_avg" not in st:
          st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(g), torch.zeros_like(g)
        st["step"] += 1
        st["exp_avg"].mul_(betas[0]).add_(g, alpha=1 - betas[0])
        st["exp_avg_sq"].mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        step_size = lr * math.sqrt(1 - betas[1] ** st["step"]) / (1 - betas[0] ** st["step"])
        norm_grad = st["exp_avg"] / (st["exp_avg_sq"].sqrt() + eps)
        if k in projected:
          norm_grad = st["projector"].project_back(norm_grad)
        p.add_(norm_grad, alpha=-step_size)
  return params


def test_online_subspace_descent_matches_the_official_update_over_60_steps():
  """Defaults (AdamW on P, lr 1/update_proj_gap, weight decay 0.01, project-then-update) against the official
  update; ``embed`` and ``head`` masked full rank like the official ``attn``/``mlp`` selection. The main Adam differs
  from the official one only in where eps enters (``sqrt(v̂) + eps`` vs ``sqrt(v) + eps``): tolerance 1e-4."""
  init, x, y = _mlp_problem(1)
  lr, rank, gap, scale, steps = 1e-2, 3, 10, 0.5, 60
  mask = {"embed": True, "hidden": {"kernel": False, "bias": True}, "mid": {"kernel": False},
          "head": {"kernel": True, "bias": True}}
  opt = optim.online_subspace_descent(lr, rank=rank, update_proj_gap=gap, scale=scale, full_rank_mask=mask)
  params = _nest({k: jnp.asarray(v) for k, v in init.items()})
  state = opt.init(params)

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda q: _mlp_loss(_flat(q), jnp.asarray(x), jnp.asarray(y), jnp))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  for _ in range(steps):
    params, state = step(params, state)

  xt, yt = torch.from_numpy(x), torch.from_numpy(y)

  def grad_fn(tp):
    leaves = {k: v.detach().requires_grad_(True) for k, v in tp.items()}
    with torch.enable_grad():
      _mlp_loss(leaves, xt, yt, torch).backward()
    return {k: v.grad for k, v in leaves.items()}

  ref = _official_osd_run(init, grad_fn, {"hidden/kernel", "mid/kernel"}, lr, rank, gap, scale, steps)
  ours = _flat(params)
  for k, v in ref.items():
    r = v.numpy()
    rel = np.linalg.norm(np.asarray(ours[k]) - r) / np.linalg.norm(r)
    assert rel <= 1e-4, (k, rel)
    assert np.linalg.norm(r - init[k]) / np.linalg.norm(init[k]) > 0.02, k
