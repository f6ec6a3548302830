"""CondInst's mask branch and dynamic mask head (AdelaiDet's ``MaskBranch`` and
``DynamicMaskHead``), and the point loss APIS trains CondInst with (PointSup's protocol,
apis-active-pointly-supervised.txt Sec. 4.1: the point's prediction is sampled from the mask map
by bilinear interpolation, binary cross-entropy on the labeled points only).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alseg.models.condinst.layers import (aligned_bilinear, compute_locations, dynamic_param_counts, grid_coords,
                                          parse_dynamic_params, run_dynamic_heads)

__all__ = ["DynamicMaskHead", "MaskBranch", "bilinear_at", "point_bce_terms"]


def _conv_norm_relu(c_in: int, c_out: int, k: int, norm) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=norm is None)
    nn.init.kaiming_uniform_(conv.weight, a=1)  # AdelaiDet's conv_with_kaiming_uniform
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0.0)
    layers = [conv] + ([norm(c_out)] if norm is not None else []) + [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class MaskBranch(nn.Module):
    """P3, P4, P5 (in_channels each) -> 3x3 conv + norm + ReLU to ``channels`` each, P4 and P5
    upsampled (``aligned_bilinear``) and summed onto P3, ``num_convs`` 3x3 conv + norm + ReLU,
    a 1x1 conv to ``out_channels``. forward(list of 3 maps (N, D, H/8, W/8), (N, D, H/16, W/16),
    (N, D, H/32, W/32)) -> (N, out_channels, H/8, W/8): the mask features, stride 8."""

    def __init__(self, in_channels: int, channels: int = 128, num_convs: int = 4, out_channels: int = 8,
                 norm=None, num_inputs: int = 3):
        super().__init__()
        self.refine = nn.ModuleList(_conv_norm_relu(in_channels, channels, 3, norm) for _ in range(num_inputs))
        tower = [_conv_norm_relu(channels, channels, 3, norm) for _ in range(num_convs)]
        out = nn.Conv2d(channels, out_channels, 1)
        nn.init.kaiming_uniform_(out.weight, a=1)
        nn.init.constant_(out.bias, 0.0)
        self.tower = nn.Sequential(*tower, out)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = self.refine[0](features[0])
        for conv, f in zip(self.refine[1:], features[1:]):
            y = conv(f)
            factor = x.shape[-2] // y.shape[-2]
            if factor * y.shape[-2] != x.shape[-2] or factor * y.shape[-1] != x.shape[-1]:
                raise ValueError(f"mask branch inputs of sizes {tuple(x.shape[-2:])} and {tuple(y.shape[-2:])} "
                                 "are not an integer factor apart (pad images to a multiple of 32)")
            x = x + aligned_bilinear(y, factor)
        return self.tower(x)


class DynamicMaskHead(nn.Module):
    """Instance-specific 1x1 conv heads on the mask features plus relative coordinates.

    ``mask_logits(mask_feats, mask_stride, params, locations, levels, im_inds)``: for instance i,
    the input is [relative coordinates (2), mask_feats[im_inds[i]] (in_channels)] at every cell of
    the stride-``mask_stride`` map, relative coordinates being (locations[i] - cell location) /
    rel_coord_norms[levels[i]] (x then y; AdelaiDet's sizes_of_interest of the instance's level);
    the head with instance i's parameters (``parse_dynamic_params``) runs on it, all instances in
    one grouped convolution; the logits are upsampled to ``out_stride`` by ``aligned_bilinear``.
    Returns (n, 1, H * f, W * f) logits, f = mask_stride / out_stride.
    """

    def __init__(self, in_channels: int = 8, channels: int = 8, num_layers: int = 3, out_stride: int = 4,
                 rel_coord_norms: Sequence[float] = (64, 128, 256, 512, 1024)):
        super().__init__()
        self.in_channels, self.channels, self.out_stride = in_channels, channels, out_stride
        self.weight_nums, self.bias_nums = dynamic_param_counts(in_channels, channels, num_layers)
        self.num_params = sum(self.weight_nums) + sum(self.bias_nums)
        self.register_buffer("rel_coord_norms", torch.tensor([float(v) for v in rel_coord_norms]), persistent=False)

    def mask_logits(self, mask_feats: Tensor, mask_stride: int, params: Tensor, locations: Tensor, levels: Tensor,
                    im_inds: Tensor) -> Tensor:
        n = params.shape[0]
        _, c, h, w = mask_feats.shape
        factor = mask_stride // self.out_stride
        if factor * self.out_stride != mask_stride:
            raise ValueError(f"mask stride {mask_stride} is not a multiple of the output stride {self.out_stride}")
        if n == 0:
            return mask_feats.new_zeros((0, 1, h * factor, w * factor))
        grid = compute_locations(h, w, mask_stride, mask_feats.device)  # (HW, 2)
        rel = locations.float().reshape(-1, 2, 1) - grid.t().reshape(1, 2, -1)  # (n, 2, HW)
        rel = rel / self.rel_coord_norms[levels].reshape(-1, 1, 1)
        inputs = torch.cat([rel.to(mask_feats.dtype), mask_feats[im_inds].reshape(n, c, h * w)], dim=1)
        weights, biases = parse_dynamic_params(params, self.weight_nums, self.bias_nums)
        logits = run_dynamic_heads(inputs.reshape(n, -1, h, w), weights, biases)
        return aligned_bilinear(logits, factor)


def point_bce_terms(logits: Tensor, stride: int, points: Tensor, rows: Tensor) -> tuple[Tensor, int]:
    """Sum of the point BCE terms over (map, point) pairs and their number.

    logits (n, h, w): mask logits at ``stride`` in the input frame; points (Q, 3): x, y
    (continuous input-frame pixels) and label (0/1) of each pair; rows (Q,) the map of each pair.
    Each point is sampled from its map by bilinear interpolation at the grid coordinate of
    ``grid_coords``, coordinates clamped to the map (as ``grid_sample`` with
    ``align_corners=False, padding_mode="border"``, and
    ``alseg.models.point_supervision.sample_point_logits``, without copying a map per pair). The sum is 0, connected to
    ``logits``, when Q = 0. The gradient w.r.t. cell c of pair q's map is
    w_qc (sigmoid(z_q) - u_q), w_qc its bilinear weight, z_q the sampled logit, u_q the label.
    """
    if rows.numel() == 0:
        return logits.sum() * 0, 0
    gx, gy = grid_coords(points[:, :2].float(), stride)
    z = bilinear_at(logits, rows, gx, gy)
    return F.binary_cross_entropy_with_logits(z, points[:, 2].float(), reduction="sum"), int(rows.numel())


def outside_box_bce(logits: Tensor, stride: int, boxes: Tensor) -> Tensor:
    """Per map, the mean BCE against background (0) over its cells outside ``boxes``: (n,) float.

    logits (n, h, w): mask logits at ``stride`` in the input frame (cell (r, c) centred at input
    pixel (stride c + stride // 2 + 0.5, stride r + stride // 2 + 0.5), as the ground truth is
    sampled); boxes (n, 4) xyxy input-frame pixels, the instance's ground-truth box. A map with no
    cell outside its box gives 0. The box annotation as a constraint: a point-supervised instance
    is background outside its box (the prior Mask R-CNN's RoI masks have by construction).
    """
    n, h, w = logits.shape
    off = stride // 2 + 0.5
    cx = torch.arange(w, device=logits.device, dtype=torch.float32) * stride + off
    cy = torch.arange(h, device=logits.device, dtype=torch.float32) * stride + off
    b = boxes.to(logits.device, torch.float32)
    out_x = (cx[None] < b[:, 0:1]) | (cx[None] > b[:, 2:3])  # (n, w)
    out_y = (cy[None] < b[:, 1:2]) | (cy[None] > b[:, 3:4])  # (n, h)
    outside = (out_y[:, :, None] | out_x[:, None, :]).float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits, dtype=torch.float32),
                                             reduction="none")
    return (bce * outside).sum(dim=(1, 2)) / outside.sum(dim=(1, 2)).clamp(min=1)


def bilinear_at(maps: Tensor, rows: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Bilinear samples (Q,) float32 of ``maps`` (n, h, w) at (gx[q], gy[q]) of map rows[q], cells
    at integer coordinates, coordinates clamped to [0, w - 1] x [0, h - 1]."""
    _, h, w = maps.shape
    gx = gx.float().clamp(0, w - 1)
    gy = gy.float().clamp(0, h - 1)
    x0 = gx.floor().long().clamp(max=w - 1)
    y0 = gy.floor().long().clamp(max=h - 1)
    x1 = (x0 + 1).clamp(max=w - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    wx, wy = gx - x0.float(), gy - y0.float()
    m = maps.float()
    return (m[rows, y0, x0] * (1 - wx) * (1 - wy) + m[rows, y0, x1] * wx * (1 - wy)
            + m[rows, y1, x0] * (1 - wx) * wy + m[rows, y1, x1] * wx * wy)
