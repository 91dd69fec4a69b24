"""Weight Standardization and Batch-Channel Normalization against the official PyTorch code.

Oracle: the forward passes of github.com/joe-siyuan-qiao/Batch-Channel-Normalization, file
``imagenet/models/layers.py`` at commit 0244c3e99417a511b60171fd86783c904d0132c0 (class ``Conv2d.forward`` and
class ``GN.forward``), transcribed below line by line with torch ops. Tolerance: 1e-5 absolute (float32).
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from paperlab import param

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _official_ws_conv(x_nchw, weight_oihw, bias, padding):
  # imagenet/models/layers.py, Conv2d.forward (commit 0244c3e)
  weight = weight_oihw
  weight_mean = weight.mean(dim=1, keepdim=True).mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
  weight = weight - weight_mean
  std = torch.pow(weight.view(weight.size(0), -1).var(dim=1) + 1e-5, 0.5).view(-1, 1, 1, 1)
  weight = weight / std.expand_as(weight)
  return F.conv2d(x_nchw, weight, bias, 1, padding, 1, 1)


class _OfficialGN(torch.nn.Module):
  # imagenet/models/layers.py, class GN (commit 0244c3e)
  def __init__(self, num_channels, num_groups):
    super().__init__()
    self.num_channels = num_channels
    self.num_groups = num_groups
    self.weight = torch.nn.Parameter(torch.ones(1, num_groups, 1))
    self.bias = torch.nn.Parameter(torch.zeros(1, num_groups, 1))
    self.pbn = torch.nn.BatchNorm2d(num_channels)

  def forward(self, inp):
    out = self.pbn(inp)
    out = out.view(1, inp.size(0) * self.num_groups, -1)
    out = torch.batch_norm(out, None, None, None, None, True, 0, 1e-5, True)
    out = out.view(inp.size(0), self.num_groups, -1)
    out = self.weight * out + self.bias
    out = out.view_as(inp)
    return out


def test_std_conv_matches_the_official_conv2d():
  rng = np.random.default_rng(0)
  conv = param.StdConv(3, 5, (3, 3), padding=((1, 1), (1, 1)), rngs=nnx.Rngs(0))
  kernel = rng.normal(0.1, 0.4, (3, 3, 3, 5)).astype(np.float32)
  bias = rng.normal(size=(5,)).astype(np.float32)
  conv.conv.kernel[...] = kernel
  conv.conv.bias[...] = bias
  x = rng.normal(size=(2, 7, 7, 3)).astype(np.float32)
  ours = np.asarray(conv(x))
  ref = _official_ws_conv(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous(),
                          torch.from_numpy(bias), padding=1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_batch_channel_norm_matches_the_official_gn_in_training():
  rng = np.random.default_rng(1)
  c, g = 8, 4
  bcn = param.BatchChannelNorm(c, num_groups=g, rngs=nnx.Rngs(0))
  ref = _OfficialGN(c, g).train()
  bn_scale, bn_bias = rng.normal(1.0, 0.3, c).astype(np.float32), rng.normal(0, 0.3, c).astype(np.float32)
  scale, bias = rng.normal(1.0, 0.3, g).astype(np.float32), rng.normal(0, 0.3, g).astype(np.float32)
  bcn.bn.scale[...], bcn.bn.bias[...], bcn.scale[...], bcn.bias[...] = bn_scale, bn_bias, scale, bias
  with torch.no_grad():
    ref.pbn.weight.copy_(torch.from_numpy(bn_scale))
    ref.pbn.bias.copy_(torch.from_numpy(bn_bias))
    ref.weight.copy_(torch.from_numpy(scale).view(1, g, 1))
    ref.bias.copy_(torch.from_numpy(bias).view(1, g, 1))
  x = (rng.normal(size=(2, 5, 5, c)) * 3 + 1).astype(np.float32)  # batch 2: the micro-batch setting
  ours = np.asarray(bcn(x))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  # running mean after one step: PyTorch momentum 0.1 == Flax momentum 0.9
  np.testing.assert_allclose(np.asarray(bcn.bn.mean[...]), ref.pbn.running_mean.numpy(), atol=1e-6)
