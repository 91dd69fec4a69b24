"""Tests for paperlab.merge.taskpool (the ROT-DIGITS fine-tune pool shared by the merging reproductions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from paperlab import data, merge

TASKS = ("rot90", "invert")


@pytest.fixture(scope="module")
def task_data():
  return data.transformed_digits(TASKS)


@pytest.fixture(scope="module")
def pool(task_data):
  return merge.finetune_task_pool(task_data, seeds=(0, 1), width=32, base_steps=150, finetune_steps=150)


def test_shapes(pool, task_data):
  assert pool.tasks == TASKS
  assert pool.num_seeds == 2
  assert pool.base["hidden"][0]["kernel"].shape == (2, 64, 32)
  assert pool.base["head"]["kernel"].shape == (2, 32, 10)
  assert set(pool.backbones) == {"hidden"}
  assert pool.backbones["hidden"][1]["kernel"].shape == (2, 2, 32, 32)
  assert pool.heads["kernel"].shape == (2, 2, 32, 10)
  assert pool.finetune_loss.shape == (2, 2, 150)
  assert pool.splits["test"][0].shape == task_data.x_test.shape
  m = pool.member(1)
  assert len(m.finetuned) == 2 and m.heads["kernel"].shape == (2, 32, 10)
  np.testing.assert_array_equal(m.finetuned[0]["hidden"][0]["kernel"], pool.backbones["hidden"][0]["kernel"][1, 0])
  np.testing.assert_array_equal(m.base_backbone["hidden"][0]["kernel"], pool.base["hidden"][0]["kernel"][1])


def test_finetunes_beat_the_base_on_their_own_task(pool):
  for s in range(pool.num_seeds):
    m = pool.member(s)
    base = pool.accuracy(m.base_backbone, m.heads)
    for t, ft in enumerate(m.finetuned):
      own = pool.accuracy(ft, m.heads)[t]
      assert own > base[t] + 0.2, (s, t, own, base[t])
      assert own > 0.6


def test_evaluators_agree_with_a_direct_apply(pool):
  m = pool.member(0)
  xs, y = pool.splits["val"]
  for t, ft in enumerate(m.finetuned):
    head = jax.tree.map(lambda h: h[t], m.heads)
    model = nnx.merge(pool.graphdef, {**ft, "head": head}, {})
    direct = float(np.mean(np.argmax(np.asarray(model(xs[t])), -1) == np.asarray(y)))
    assert pool.accuracy(ft, m.heads, "val")[t] == pytest.approx(direct)
  delta = merge.task_vector(m.base_backbone, merge.task_arithmetic(m.base_backbone, m.finetuned, 1.0))
  lams = (0.0, 0.5, 1.0)
  sweep = np.asarray(pool.val_sweep(m.base_backbone, delta, m.heads, jnp.asarray(lams), xs, y))
  for lam, score in zip(lams, sweep):
    merged = merge.apply_task_vector(m.base_backbone, delta, lam)
    assert score == pytest.approx(float(np.mean(pool.accuracy(merged, m.heads, "val"))), abs=1e-6)
  lam, test = pool.tune(m, delta, lams)
  assert lam == lams[int(np.argmax(sweep))]
  np.testing.assert_allclose(test, pool.accuracy(merge.apply_task_vector(m.base_backbone, delta, lam), m.heads),
                             atol=1e-6)


def test_layer_norm_backbone_keeps_the_norms():
  td = data.transformed_digits(("hflip",))
  pool = merge.finetune_task_pool(td, seeds=(0,), width=8, base_steps=2, finetune_steps=2, norm="layer")
  m = pool.member(0)
  assert set(m.base_backbone) == {"hidden", "norms"}
  assert pool.accuracy(m.finetuned[0], m.heads).shape == (1,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seeds=()), "seeds"), (dict(width=0), "width"), (dict(base_steps=-1), "base_steps"),
    (dict(batch_size=0), "batch_size"), (dict(learning_rate=0.0), "learning_rate"), (dict(norm="batch"), "norm"),
    (dict(pretrain_task_fraction=1.5), "pretrain_task_fraction")])
def test_validation(task_data, kwargs, match):
  with pytest.raises(ValueError, match=match):
    merge.finetune_task_pool(task_data, **kwargs)


def test_rejects_non_task_data():
  with pytest.raises(TypeError, match="task_data"):
    merge.finetune_task_pool(data.digits())


def test_compare_and_task_subset_tuning(pool):
  lams = (0.0, 0.5, 1.0)
  ta = lambda m, si: merge.task_arithmetic(m.base_backbone, m.finetuned, 1.0)
  scores = pool.compare({"ta": ta, "base": lambda m, si: m.base_backbone}, lams)
  assert scores["ta"].accuracy.shape == (2, 2) and len(scores["ta"].lam) == 2
  for si in range(2):
    m = pool.member(si)
    lam, test = pool.tune(m, merge.task_vector(m.base_backbone, ta(m, si)), lams)
    assert scores["ta"].lam[si] == lam
    np.testing.assert_array_equal(scores["ta"].accuracy[si], test)
    np.testing.assert_allclose(scores["base"].accuracy[si], pool.accuracy(m.base_backbone, m.heads))
  assert scores["ta"].mean == pytest.approx(float(np.mean(scores["ta"].per_seed)))
  summary = merge.scores_summary(scores)
  assert summary["lam"]["ta"] == scores["ta"].lam
  np.testing.assert_allclose(summary["per_task_accuracy"]["base"], scores["base"].accuracy.mean(0))
  assert summary["mean_task_accuracy"]["ta"] == scores["ta"].mean
  lines = merge.format_scores(scores, {"ta": "note"})
  assert len(lines) == 2 and lines[0].endswith("note") and f"{scores['ta'].mean * 100:5.1f}" in lines[0]
  # tuning on task 1 alone picks the scale that is best on its validation split
  m = pool.member(0)
  delta = merge.task_vector(m.base_backbone, m.finetuned[1])
  lam, _ = pool.tune(m, delta, lams, tasks=[1])
  val1 = [pool.accuracy(merge.apply_task_vector(m.base_backbone, delta, g), m.heads, "val")[1] for g in lams]
  assert lam == lams[int(np.argmax(val1))]
  with pytest.raises(ValueError, match="tasks"):
    pool.tune(m, delta, lams, tasks=[2])
  with pytest.raises(ValueError, match="lams"):
    pool.tune(m, delta, ())
