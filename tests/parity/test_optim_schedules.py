"""Parity of paperlab.optim schedules with torch's OneCycleLR and pytorch_optimizer's WSD scheduler."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
wsd_torch = pytest.importorskip("pytorch_optimizer.lr_scheduler.wsd")

from paperlab.optim import one_cycle, one_cycle_momentum, wsd_schedule  # noqa: E402


def _torch_one_cycle(total_steps, max_lr, **kw):
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=max_lr, momentum=0.9)
  sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, cycle_momentum=True,
                                              base_momentum=0.85, max_momentum=0.95, **kw)
  lrs, moms = [], []
  for _ in range(total_steps):
    lrs.append(opt.param_groups[0]["lr"])
    moms.append(opt.param_groups[0]["momentum"])
    opt.step()
    sched.step()
  return np.array(lrs), np.array(moms)


@pytest.mark.parametrize("total_steps,pct_start,anneal,three_phase", [
    (1000, 0.45, "linear", True), (1000, 0.45, "cos", False), (357, 0.3, "linear", False), (357, 0.3, "cos", True)])
def test_one_cycle_matches_torch_one_cycle_lr(three_phase, anneal, total_steps, pct_start):
  kw = dict(pct_start=pct_start, div_factor=10.0, final_div_factor=100.0, three_phase=three_phase,
            anneal_strategy=anneal)
  ref_lr, ref_mom = _torch_one_cycle(total_steps, 0.3, **kw)
  steps = jnp.arange(total_steps)
  lr = jax.jit(jax.vmap(one_cycle(total_steps, 0.3, **kw)))(steps)
  mom = jax.jit(jax.vmap(one_cycle_momentum(total_steps, pct_start=pct_start, three_phase=three_phase,
                                            anneal_strategy=anneal)))(steps)
  np.testing.assert_allclose(np.asarray(lr), ref_lr, rtol=2e-6, atol=0)
  np.testing.assert_allclose(np.asarray(mom), ref_mom, rtol=5e-7, atol=0)  # float32 has eps 1.2e-7


@pytest.mark.parametrize("cooldown", ["linear", "1-sqrt", "1-square", "cosine"])
@pytest.mark.parametrize("warmup,stable,decay", [(50, 700, 250), (0, 80, 20), (10, 0, 90)])
def test_wsd_matches_pytorch_optimizer(cooldown, warmup, stable, decay):
  total = warmup + stable + decay
  min_ratio = 0.1 if cooldown == "cosine" else 0.0  # pytorch_optimizer applies the floor only to cosine
  ref = np.array([wsd_torch.get_wsd_scheduler_lambda(
      t, num_warmup_steps=warmup, num_stable_steps=stable, num_decay_steps=decay, min_lr_ratio=min_ratio,
      num_cycles=0.5, cooldown_type=cooldown) for t in range(total + 20)])
  sched = wsd_schedule(2e-3, total, warmup_steps=warmup, decay_steps=decay, decay_type=cooldown,
                       final_value_ratio=min_ratio)
  ours = jax.jit(jax.vmap(sched))(jnp.arange(total + 20)) / 2e-3
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-6, atol=1e-7)
