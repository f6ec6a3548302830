"""Building blocks of CondInst (Tian et al., ECCV 2020) in AdelaiDet's form: feature-map locations,
aligned bilinear upsampling, the per-level FCOS scale, the dice loss, and the dynamic mask head
(controller output split into conv weights and biases, all instances run as one grouped conv).

Coordinate conventions (AdelaiDet's ``compute_locations``): cell (r, c) of a map of stride s sits
at image location (x, y) = (s * c + s // 2, s * r + s // 2), in pixels of the network's input
(resized, padded) frame. Ground-truth masks at stride s are the input-frame pixels of index
(s // 2 + s * r, s // 2 + s * c) (AdelaiDet's ``add_bitmasks``); a point at continuous image
coordinate x (pixel centres at +0.5) therefore lies at grid coordinate (x - 0.5 - s // 2) / s.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Scale",
    "aligned_bilinear",
    "compute_locations",
    "dice_loss",
    "dynamic_param_counts",
    "grid_coords",
    "parse_dynamic_params",
    "run_dynamic_heads",
]


class Scale(nn.Module):
    """A learnable scalar multiplier (FCOS's per-level scale of the box regression)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def compute_locations(h: int, w: int, stride: int, device=None) -> Tensor:
    """(h * w, 2) float32 (x, y) image locations of the cells of an h x w map of ``stride``,
    row-major: cell (r, c) at (stride * c + stride // 2, stride * r + stride // 2)."""
    xs = torch.arange(w, dtype=torch.float32, device=device) * stride
    ys = torch.arange(h, dtype=torch.float32, device=device) * stride
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), dim=1) + stride // 2


def aligned_bilinear(x: Tensor, factor: int) -> Tensor:
    """AdelaiDet's ``aligned_bilinear``: upsample (N, C, h, w) to (N, C, factor * h, factor * w).

    Output cell j takes the input at coordinate (j - factor // 2) / factor (input cells at integer
    coordinates; linear interpolation between neighbours; clamped to input cell 0 for
    j < factor // 2 and to the last input cell beyond it): input cell i is reproduced exactly at
    output cell factor * i + factor // 2. Pasting stride-4 mask probabilities to stride 1 with
    factor 4 thus puts cell c at input-frame pixel 4 c + 2, the pixel its ground truth was
    sampled from (module docstring). Between strides 8 and 4 (mask branch to mask logits), output
    cell j reads the stride-8 map at image location 4 j, half a stride-4 cell before the
    location 4 j + 2 of ``compute_locations``: AdelaiDet's offset, kept as is.
    """
    if x.dim() != 4:
        raise ValueError(f"aligned_bilinear needs (N, C, h, w), got {tuple(x.shape)}")
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    oh, ow = factor * h + 1, factor * w + 1
    x = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, : oh - 1, : ow - 1]


def grid_coords(xy: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Grid coordinates (gx, gy) in a stride-``stride`` mask map (cells at integer coordinates) of
    points ``xy`` (n, 2) given in continuous input-frame pixels (pixel centres at +0.5); see the
    module docstring: g = (x - 0.5 - stride // 2) / stride."""
    off = 0.5 + stride // 2
    return (xy[:, 0] - off) / stride, (xy[:, 1] - off) / stride


def dice_loss(probs: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-instance dice loss of AdelaiDet's ``dice_coefficient``:
    1 - 2 sum(p t) / (sum p^2 + sum t^2 + eps), over all cells of each instance; (n,)."""
    n = probs.shape[0]
    p = probs.reshape(n, -1).float()
    t = target.reshape(n, -1).float()
    inter = (p * t).sum(1)
    union = (p * p).sum(1) + (t * t).sum(1) + eps
    return 1.0 - 2.0 * inter / union


def dynamic_param_counts(in_channels: int, channels: int, num_layers: int, rel_coords: bool = True
                         ) -> tuple[list[int], list[int]]:
    """(weight counts, bias counts) per dynamic layer: layer 0 maps in_channels (+ 2 relative
    coordinates) to ``channels``, middle layers channels -> channels, the last channels -> 1.
    With 8 mask channels, 8 channels, 3 layers: [80, 64, 8], [8, 8, 1], 169 in all."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    weights, biases = [], []
    c_in = in_channels + (2 if rel_coords else 0)
    for layer in range(num_layers):
        c_out = 1 if layer == num_layers - 1 else channels
        weights.append(c_in * c_out)
        biases.append(c_out)
        c_in = c_out
    return weights, biases


def parse_dynamic_params(params: Tensor, weight_nums: Sequence[int], bias_nums: Sequence[int]
                         ) -> tuple[list[Tensor], list[Tensor]]:
    """Split controller outputs (n, sum(weights) + sum(biases)) into per-layer grouped-conv
    weights (n * c_out, c_in, 1, 1) and biases (n * c_out,). Order along the 169 values: all
    layers' weights, then all layers' biases (AdelaiDet's ``parse_dynamic_params``); each
    layer's weights are out-channel-major (c_out rows of c_in values)."""
    if params.dim() != 2 or params.shape[1] != sum(weight_nums) + sum(bias_nums):
        raise ValueError(f"params must be (n, {sum(weight_nums) + sum(bias_nums)}), got {tuple(params.shape)}")
    n = params.shape[0]
    parts = list(torch.split(params, list(weight_nums) + list(bias_nums), dim=1))
    k = len(weight_nums)
    weights, biases = [], []
    for w, b, wn, bn in zip(parts[:k], parts[k:], weight_nums, bias_nums):
        weights.append(w.reshape(n * bn, wn // bn, 1, 1))
        biases.append(b.reshape(n * bn))
    return weights, biases


def run_dynamic_heads(inputs: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    """Every instance's dynamic head on its own input, as one grouped 1x1 convolution per layer
    (ReLU between layers, none after the last). inputs (n, c_in, H, W); returns (n, c_last, H, W)."""
    n, _, h, w = inputs.shape
    if n == 0:
        return inputs.new_zeros((0, biases[-1].numel(), h, w))
    x = inputs.reshape(1, -1, h, w)
    for i, (wt, b) in enumerate(zip(weights, biases)):
        x = F.conv2d(x, wt.to(x.dtype), b.to(x.dtype), groups=n)
        if i < len(weights) - 1:
            x = F.relu(x)
    return x.reshape(n, -1, h, w)
