"""BiLLM against a torch transcription of the official code (github.com/Aaronhuang-778/BiLLM, commit
dc137ebbf62d4b31e8a82ba6bf9e18a51a298dcb): ``binary.high_order_residual``, ``utils/mask.generate_structural_mask``,
``utils/autosearch.structural_searching``, ``utils/structure.structural_guassian_distribution`` (metric
"hessian") and ``bigptq.BRAGPTQ.fasterquant`` with the ``braq`` quantizer, orders (1, 1, 2), ``up_lim`` 50 (the
value ``fasterquant`` passes), blocksize 128. Same float32 inputs; the searched masks must be identical and the
binarized weights equal to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

import jax.numpy as jnp

from paperlab import quant

torch = pytest.importorskip("torch")


def _high_order_residual(x, mask, order=2):
  sum_order = torch.zeros_like(x)
  new_matrix = x.clone()
  new_matrix = new_matrix * mask
  for od in range(order):
    residual = new_matrix - sum_order
    masked_x_tensor = torch.where(mask, residual, torch.tensor(float("nan")))
    mean_tensor_all = torch.nanmean(masked_x_tensor, dim=1)
    mean_tensor_all = torch.where(torch.isnan(mean_tensor_all), torch.zeros_like(mean_tensor_all), mean_tensor_all)
    masked_x_tensor -= mean_tensor_all[:, None]
    scale_tensor_all = torch.nanmean(torch.abs(masked_x_tensor), dim=1)
    scale_tensor_all = torch.where(torch.isnan(scale_tensor_all), torch.zeros_like(scale_tensor_all),
                                   scale_tensor_all)
    binary = torch.sign(masked_x_tensor)
    binary *= scale_tensor_all[:, None]
    binary += mean_tensor_all[:, None]
    sum_order = sum_order + binary * mask
  return sum_order


def _generate_structural_mask(origin_matrix, mask3, braq1_border):
  mask1_2 = ~mask3
  binary_group = torch.abs(origin_matrix * mask1_2)
  mask2 = binary_group >= braq1_border
  mask1 = binary_group < braq1_border
  return mask1 * mask1_2, mask2 * mask1_2


def _structural_searching(origin_matrix, up_lim=30):
  minimal_value = float("inf")
  minimal_value_0 = float("inf")
  true_counts = origin_matrix.abs().sum(dim=0)
  _, top_braq_2_columns = torch.topk(true_counts, up_lim)
  for i in range(1, up_lim):
    mask3 = torch.full((origin_matrix.shape[0], origin_matrix.shape[1]), False)
    mask3[:, top_braq_2_columns[:i]] = True
    group3 = _high_order_residual(origin_matrix, mask3, order=2)
    group4 = _high_order_residual(origin_matrix, ~mask3, order=2)
    quantize_error_0 = torch.mean((origin_matrix - (group4 + group3)) ** 2)
    if quantize_error_0 < minimal_value_0:
      minimal_value_0 = quantize_error_0
      optimal_split_0 = i
  _, top_braq_2_columns = torch.topk(true_counts, optimal_split_0)
  mask3 = torch.full((origin_matrix.shape[0], origin_matrix.shape[1]), False)
  mask3[:, top_braq_2_columns] = True
  group3 = _high_order_residual(origin_matrix, mask3, order=2)
  search_matrix = origin_matrix * (~mask3)
  flat_abs_tensor = torch.abs(search_matrix).view(-1)
  percentiles = torch.linspace(0.10, 0.90, 81)
  percentile_values = torch.tensor(np.quantile(flat_abs_tensor.numpy(), q=percentiles.numpy(), axis=None,
                                               keepdims=False))
  for split_value in percentile_values:
    mask1, mask2 = _generate_structural_mask(origin_matrix, mask3, split_value)
    group1 = _high_order_residual(origin_matrix, mask1, order=1)
    group2 = _high_order_residual(origin_matrix, mask2, order=1)
    quantize_error = torch.mean((origin_matrix - (group1 + group2 + group3)) ** 2)
    if quantize_error < minimal_value:
      minimal_value = quantize_error
      optimal_split = split_value
  return optimal_split, mask3


def _fasterquant(W, H, blocksize=128, percdamp=0.01, orders=(1, 1, 2)):
  W = W.clone().float()
  columns = W.shape[1]
  dead = torch.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  damp = percdamp * torch.mean(torch.diag(H))
  diag = torch.arange(columns)
  H[diag, diag] += damp
  H = torch.linalg.cholesky(H)
  H = torch.cholesky_inverse(H)
  H = torch.linalg.cholesky(H, upper=True)
  Hinv = H
  masks3 = []
  for col_st in range(0, columns, blocksize):
    col_ed = min(col_st + blocksize, columns)
    tmp = W[:, col_st:col_ed]
    target = tmp ** 2 / (torch.diag(H[col_st:col_ed, col_st:col_ed]).reshape((1, -1))) ** 2
    split, mask3 = _structural_searching(target, 50)
    mask1, mask2 = _generate_structural_mask(target, mask3, split)
    mask = [mask1, mask2, mask3]
    W1 = W[:, col_st:col_ed].clone()
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    Hinv1 = Hinv[col_st:col_ed, col_st:col_ed]
    q_part_groups = [_high_order_residual(W1, mask[i], order=orders[i]) for i in range(3)]
    for i in range(col_ed - col_st):
      w = W1[:, i]
      d = Hinv1[i, i]
      q = torch.zeros_like(w)
      for j in range(3):
        q += q_part_groups[j][:, i] * mask[j][:, i]
      Q1[:, i] = q
      Err1[:, i] = (w - q) / d
    W[:, col_st:col_ed] = Q1
    W[:, col_ed:] -= Err1.matmul(Hinv[col_st:col_ed, col_ed:])
    masks3.append(mask3[0])
  return W, torch.cat(masks3)


def test_billm_layer_matches_the_official_bragptq():
  rng = np.random.default_rng(0)
  n_in, n_out = 192, 16  # a full block of 128 and a partial one of 64 (>= up_lim 50)
  x = rng.normal(size=(400, n_in)).astype(np.float32) * rng.uniform(0.3, 2.0, size=n_in).astype(np.float32)
  h = (2.0 / x.shape[0]) * x.T @ x
  kernel = (0.05 * rng.standard_t(4, size=(n_in, n_out))).astype(np.float32)
  ours = quant.billm_layer(jnp.asarray(kernel), jnp.asarray(h))
  Q, salient = _fasterquant(torch.from_numpy(kernel.T.copy()), torch.from_numpy(h.copy()))
  np.testing.assert_array_equal(np.asarray(ours.salient), salient.numpy())
  np.testing.assert_allclose(np.asarray(ours.w_hat), Q.numpy().T, atol=1e-5)
  assert ours.sparse.shape == kernel.shape and ours.split.shape == (2,)
  assert not bool(jnp.any(ours.sparse & ours.salient[:, None]))  # the three groups are disjoint


def test_residual_binarize_matches_high_order_residual():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(40, 6)).astype(np.float32)
  mask = rng.random(size=w.shape) < 0.6
  mask[:, 0] = False  # an empty channel binarizes to zeros
  for order in (1, 2, 3):
    want = _high_order_residual(torch.from_numpy(w.T.copy()), torch.from_numpy(mask.T.copy()), order=order)
    got = quant.residual_binarize(jnp.asarray(w), jnp.asarray(mask), order=order)
    np.testing.assert_allclose(np.asarray(got), want.numpy().T, atol=1e-6)
