"""A mask-IoU head on Mask R-CNN: predicts, for each detection, the IoU of its mask with the ground
truth (the IoU branch of mask-guided selection, mask-guided-iou-selection.txt Sec. 5, built as in
Mask Scoring R-CNN: RoI features concatenated with the predicted mask, convolutions, then FCs).

It is trained after the segmentation losses, with the whole segmentation network frozen (Sec. 6.1,
Table 2, "+ Freeze Seg. Network"), with an L1 loss on the IoU or, with ``sqrt``, on its square root
(the paper's best option, "+ Sqrt Loss": it gives low IoUs more weight).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from alseg.masks import mask_overlaps

log = logging.getLogger(__name__)


class MaskIoUHead(nn.Module):
    def __init__(self, in_channels: int, conv_dim: int = 64, fc_dim: int = 256, roi_size: int = 14,
                 sqrt: bool = True):
        super().__init__()
        self.sqrt = sqrt
        layers, c = [], in_channels + 1
        for k in range(4):  # the last convolution halves the resolution, as in Mask Scoring R-CNN
            layers += [nn.Conv2d(c, conv_dim, 3, stride=2 if k == 3 else 1, padding=1), nn.ReLU(inplace=True)]
            c = conv_dim
        self.convs = nn.Sequential(*layers)
        side = (roi_size + 1) // 2
        self.fcs = nn.Sequential(nn.Flatten(), nn.Linear(conv_dim * side * side, fc_dim), nn.ReLU(inplace=True),
                                 nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True), nn.Linear(fc_dim, 1))

    def forward(self, roi_features: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        """The raw regression output (IoU, or sqrt(IoU) when ``sqrt``), shape (n,)."""
        mask = F.max_pool2d(mask_probs[:, None], kernel_size=2) if mask_probs.shape[-1] != roi_features.shape[-1] \
            else mask_probs[:, None]
        return self.fcs(self.convs(torch.cat([roi_features, mask], 1)))[:, 0]

    def predict(self, roi_features: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        """Predicted IoU in [0, 1]."""
        if len(mask_probs) == 0:
            return mask_probs.new_zeros(0)
        out = self.forward(roi_features, mask_probs).clamp(0, 1)
        return out * out if self.sqrt else out

    def loss(self, roi_features, mask_probs, target_iou: torch.Tensor) -> torch.Tensor:
        target = target_iou.sqrt() if self.sqrt else target_iou
        return F.l1_loss(self.forward(roi_features, mask_probs), target)


def true_ious(det: dict, gt_masks: np.ndarray, gt_labels: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """For each detection (pasted ``masks`` (n, 1, H, W) probabilities, ``labels``): the IoU of its
    binarised mask with the best-overlapping ground-truth instance of its class (0 when none)."""
    n = len(det["labels"])
    out = np.zeros(n, np.float32)
    if n == 0 or len(gt_masks) == 0:
        return out
    pred = (det["masks"][:, 0] >= threshold).cpu().numpy()
    iou, _ = mask_overlaps(pred, gt_masks)
    same_class = det["labels"].cpu().numpy()[:, None] == gt_labels[None, :]
    return np.where(same_class, iou, 0.0).max(1).astype(np.float32)


def train_mask_iou_head(model, dataset, iters: int, lr: float, device: str = "cpu", batch_size: int = 4,
                        max_detections: int = 20, seed: int = 0, progress: bool = True) -> dict:
    """Train only ``model.mask_iou_head`` (a Mask R-CNN family model's; its
    ``train_mask_iou_head`` method calls this) on detections of the (frozen) model on the labeled
    images.

    The segmentation network is frozen, so its detections, RoI features and IoU targets are
    computed once, then the head is fitted on them for ``iters`` steps of ``batch_size`` images.
    """
    head = model.mask_iou_head
    model.eval()
    cached = []
    for k in tqdm(range(len(dataset)), desc="mask-IoU targets", leave=False, disable=not progress):
        image, target = dataset[(k, 0)]
        with torch.no_grad():
            det = model.predict_instances([image.to(device)], paste_masks=True, roi_features=True)[0]
        keep = torch.argsort(det["scores"], descending=True)[:max_detections]
        det = {key: det[key][keep] for key in ("labels", "masks", "roi_features", "mask_probs")}
        iou = true_ious(det, target["masks"].numpy(), target["labels"].numpy())
        if len(iou):
            cached.append((det["roi_features"], det["mask_probs"], torch.from_numpy(iou).to(device)))
    if not cached:
        log.warning("mask-IoU head: no detection on the labeled images; head left untrained")
        return {}
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    head.train()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in tqdm(range(iters), desc="mask-IoU head", leave=False, disable=not progress):
        batch = [cached[i] for i in rng.integers(0, len(cached), batch_size)]
        loss = head.loss(torch.cat([b[0] for b in batch]), torch.cat([b[1] for b in batch]),
                         torch.cat([b[2] for b in batch]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    head.eval()
    for name, p in model.named_parameters():
        p.requires_grad_(trainable[name])
    return {"train/loss_mask_iou": float(np.mean(losses[-50:]))}


@torch.no_grad()
def iou_prediction_errors(model, data, device: str = "cpu", score_threshold: float = 0.5) -> dict:
    """Mean absolute error of the predicted IoU against the true IoU on a dataset: per detection,
    and per image on the image score of Eq. 2 (mean over its detections), the paper's Table 2 metric.
    Any model with the mask_iou_head capability (``predict_instances`` gives ``pred_iou``)."""
    from alseg.data.torch_dataset import read_image, to_tensor

    inst_err, image_err = [], []
    for rec in data.images:
        det = model.predict_instances([to_tensor(read_image(rec)).to(device)], paste_masks=True)[0]
        keep = det["scores"] >= score_threshold
        if not keep.any():
            continue
        det = {k: det[k][keep] for k in ("labels", "masks", "pred_iou")}
        truth = true_ious(det, rec.decode_masks(), np.array([i.label for i in rec.instances]))
        pred = det["pred_iou"].cpu().numpy()
        inst_err += np.abs(pred - truth).tolist()
        image_err.append(abs(pred.mean() - truth.mean()))
    if not inst_err:
        return {}
    return {"iou_mae_instance": float(np.mean(inst_err)), "iou_mae_image": float(np.mean(image_err))}


@torch.no_grad()
def true_image_scores(model, data, image_ids, device: str = "cpu", score_threshold: float = 0.5) -> dict[int, float]:
    """Eq. 2 with the true IoU of each detection against the ground truth (the paper's oracle,
    Table 3); images without a detection above the threshold are left out. Any model of the
    interface (``alseg.models.base``)."""
    from alseg.data.torch_dataset import read_image, to_tensor

    out = {}
    for image_id in image_ids:
        rec = data.by_id[image_id]
        det = model.predict_instances([to_tensor(read_image(rec)).to(device)], paste_masks=True)[0]
        keep = det["scores"] >= score_threshold
        if keep.any():
            det = {k: det[k][keep] for k in ("labels", "masks")}
            out[image_id] = float(true_ious(det, rec.decode_masks(), np.array([i.label for i in rec.instances])).mean())
    return out
