"""Complex momentum on the bilinear game (Lorraine et al., 2022, arXiv:2102.08431), catalogue [290].

Simultaneous updates on ``min_x max_y x·y`` from ``(1, 1)``: each player follows the gradient of its own loss
(``ĝ = (y, -x)``). Gradient descent-ascent spirals out, and so does real momentum (positive or negative); complex
momentum ``β = 0.9 e^{iπ/8}`` converges to the equilibrium. The spectral radius of the linear iteration is
recorded alongside.

    paperlab run experiments/optim/complex_momentum.py --config.num_steps=10000
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from paperlab import optim

PAPER_ID = 290
CLAIM = ("On min_x max_y x*y from (1, 1) with simultaneous updates, lr 0.05 and 3000 steps, complex momentum "
         "beta=0.9*exp(i*pi/8) reaches ||(x, y)|| <= 1e-6, while GDA (beta=0), real beta=0.9 and beta=-0.5 end "
         "with ||(x, y)|| >= 1.")


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.learning_rate = 0.05
  c.num_steps = 3000
  c.scale = 1  # multiplies num_steps
  return c


BETAS = {"complex": (0.9, float(np.pi / 8)), "gda": (0.0, 0.0), "real_0.9": (0.9, 0.0), "real_-0.5": (0.5, float(np.pi))}


def _run(beta_abs, beta_phase, learning_rate, num_steps):
  opt = optim.complex_momentum(learning_rate, beta_abs=beta_abs, beta_phase=beta_phase)
  w = jnp.array([1.0, 1.0])

  def body(carry, _):
    w, s = carry
    u, s = opt.update(jnp.stack([w[1], -w[0]]), s)
    w = w + u
    return (w, s), jnp.linalg.norm(w)

  (w, _), norms = jax.lax.scan(body, (w, opt.init(w)), None, length=num_steps)
  return jnp.linalg.norm(w), norms


def _spectral_radius(beta: complex, alpha: float) -> float:
  jac = np.array([[0.0, 1.0], [-1.0, 0.0]])
  i2 = np.eye(2)
  a = np.block([[beta.real * i2, -beta.imag * i2, -jac], [beta.imag * i2, beta.real * i2, np.zeros((2, 2))],
                [alpha * beta.real * i2, -alpha * beta.imag * i2, i2 - alpha * jac]])
  return float(np.max(np.abs(np.linalg.eigvals(a))))


def run(config: ml_collections.ConfigDict, ctx) -> dict:
  num_steps = config.num_steps * config.scale
  results = {}
  for name, (beta_abs, phase) in BETAS.items():
    final, norms = jax.jit(_run, static_argnums=(3,))(beta_abs, phase, config.learning_rate, num_steps)
    norms = np.asarray(norms)
    for s in range(0, num_steps, max(1, num_steps // 10)):
      ctx.log(s, {f"{name}/norm": float(norms[s])})
    final = float(final)
    results[name] = {"final_norm": final if np.isfinite(final) else "inf",
                     "spectral_radius": _spectral_radius(beta_abs * np.exp(1j * phase), config.learning_rate)}
  finals = {k: (v["final_norm"] if v["final_norm"] != "inf" else np.inf) for k, v in results.items()}
  diverging = [k for k in BETAS if k != "complex"]
  passed = finals["complex"] <= 1e-6 and all(not finals[k] < 1.0 for k in diverging)
  results["claim"] = {"passed": bool(passed), "statement": CLAIM, "complex_final_norm": finals["complex"],
                      **{f"{k}_final_norm": results[k]["final_norm"] for k in diverging}}
  return results
