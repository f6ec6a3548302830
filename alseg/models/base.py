"""The model interface: what the loop, the pool inference and the strategies may ask of a model.

Each model family (``alseg.models.maskrcnn``: torchvision Mask R-CNN; CondInst next) is a
subclass of ``InstanceSegmenter`` built by a function named in ``model._target_`` that takes
``num_classes`` and the family's own keys. Nothing outside ``alseg/models`` names a family's
parts (its transform, backbone, heads): they call the methods below.

Building. ``build_<family>(num_classes, ..., backbone_weights=None, weights=None, checkpoint=None)``
returns the model; the loop seeds ``torch.manual_seed`` before calling it, so initial weights are
a function of the seed. Pretrained weights come through torchvision's weights API
(``fetch_torchvision_weights``, ``resolve_weights``: one-line ConfigErrors, never a hang when
offline); ``load_checkpoint`` reads a local ``{"model": state_dict}`` or bare state_dict file.

Training. ``model.train(); losses = model(images, targets)``: images a list of (3, H, W) float
tensors in [0, 1]; each target a dict with ``boxes`` (n, 4) float xyxy pixels, ``labels`` (n,)
int64 in 1..C, ``masks`` (n, H, W) uint8, ``has_mask`` (n,) bool (False: the instance is known by
its box, and its points if any, only), ``points`` (q, 4) float (instance row, x, y, label 0/1).
Returns a dict of scalar loss tensors, summed by the trainer. Instances with ``has_mask`` False
may be sent only to a model with the ``point_supervision`` capability (the loop checks).

Evaluation. ``model.eval(); model(images)``: per image a dict of ``boxes`` (n, 4) xyxy in the
original image frame, ``scores`` (n,), ``labels`` (n,) int64 1..C, ``masks`` (n, 1, H, W) float
mask probabilities at the original image size (torchvision's detection contract).

Capabilities (``model.capabilities``, names shared with the strategies' ``needs``; the loop
checks them before round 0 with one-line errors):

- ``point_supervision``: trains on box-only and point-labeled instances (the point loss lives in
  the family; Mask R-CNN: ``alseg.models.point_supervision``);
- ``mask_iou_head``: ``predict_instances`` gives ``pred_iou`` and ``train_mask_iou_head`` fits it;
- ``prediction_sets``: ``prediction_sets`` gives APIS's per-instance prediction sets.

Pool inference: ``predict_instances`` (see its docstring) gives per detection the class scores in
the layout ``model.class_prob_layout``, mask probabilities in the box frame at ``model.mask_size``
(``MASK_FRAME``), an instance embedding and an image embedding.

How a one-stage family fits (CondInst): ``class_prob_layout = SIGMOID`` (per-class scores; TAUDIS
reads them through ``class_distribution``); its full-image mask probabilities (stride 4 of the
resized input) become box-frame maps with ``image_masks_to_box(masks, boxes_resized, M, stride=4)``;
its prediction set of an instance is its FCOS positive locations, each with its own dynamic mask
head output (maps over any frame box, e.g. the ground-truth box, or the whole image); ``scale``
resizes a copy of its input transform (``resized_copy``), never the model's own.
"""

from __future__ import annotations

import copy
import logging
import socket
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor, nn

from alseg.errors import ConfigError

log = logging.getLogger(__name__)

# Capabilities (the same strings are strategy needs in alseg.strategies.base).
POINT_SUPERVISION = "point_supervision"
MASK_IOU_HEAD = "mask_iou_head"
PREDICTION_SETS = "prediction_sets"
CAPABILITIES = frozenset({POINT_SUPERVISION, MASK_IOU_HEAD, PREDICTION_SETS})

# Class score layouts of ``predict_instances``'s ``class_probs``.
SOFTMAX_WITH_BACKGROUND = "softmax_with_background"  # (n, C + 1): a softmax, column 0 background (Mask R-CNN)
SIGMOID = "sigmoid"  # (n, C): independent per-class sigmoid scores, no background (FCOS / CondInst)
CLASS_PROB_LAYOUTS = (SOFTMAX_WITH_BACKGROUND, SIGMOID)

# The one frame of per-instance mask probabilities in predictions and prediction sets: an M x M
# map over a box (x1, y1, x2, y2) in image pixels, cell (r, c) centred at
#     x = x1 + (c + 0.5) * (x2 - x1) / M,   y = y1 + (r + 0.5) * (y2 - y1) / M
# (pixel centres at +0.5): Mask R-CNN's RoI masks, and what torchvision's paste_masks_in_image
# pastes into the box. Families whose masks cover the whole image crop them with image_masks_to_box.
MASK_FRAME = "box"


class InstancePredictions(TypedDict, total=False):
    """One image's detections from ``InstanceSegmenter.predict_instances`` (n detections)."""

    boxes: Tensor  # (n, 4) float xyxy, original image frame, pixels
    scores: Tensor  # (n,) float: the detection score (as in eval forward)
    labels: Tensor  # (n,) int64, 1..C
    class_probs: Tensor  # (n, C + 1) or (n, C): layout model.class_prob_layout
    mask_probs: Tensor  # (n, M, M) float in [0, 1]: the label's mask, box frame (MASK_FRAME), M = model.mask_size
    embeddings: Tensor  # (n, D) float: the family's instance embedding
    image_embedding: Tensor  # (D',) float: the family's image embedding
    masks: Tensor  # (n, 1, H, W) float probabilities at the original size (paste_masks=True)
    roi_features: Tensor  # (n, ...) the mask-IoU head's input features (roi_features=True; family-specific)
    pred_iou: Tensor  # (n,) float in [0, 1] (mask_iou_head capability)


class InstanceSegmenter(nn.Module, ABC):
    """An instance segmentation model that alseg can train, evaluate and select with.

    Subclasses set ``family``, ``class_prob_layout`` and ``mask_size`` and implement ``forward``
    (module docstring), ``capabilities`` and ``predict_instances``; ``prediction_sets`` when they
    declare the ``prediction_sets`` capability (through ``_prediction_sets_once``: flips are handled
    here); ``train_mask_iou_head`` when they declare ``mask_iou_head``.
    """

    family: str = "?"
    class_prob_layout: str = SOFTMAX_WITH_BACKGROUND

    @property
    @abstractmethod
    def mask_size(self) -> int:
        """M of the (n, M, M) box-frame mask probabilities."""

    @property
    @abstractmethod
    def capabilities(self) -> frozenset[str]:
        """The names from ``CAPABILITIES`` this model offers (may depend on how it was built)."""

    @abstractmethod
    def predict_instances(self, images: list[Tensor], paste_masks: bool = False,
                          roi_features: bool = False) -> list[InstancePredictions]:
        """Eval-mode detections of ``images`` with what selection needs (``InstancePredictions``):
        the detections (boxes, scores, labels) are those of ``model(images)`` in eval mode; per
        detection the class scores (layout ``class_prob_layout``), the predicted class's mask
        probabilities over the detection box (box frame, ``mask_size`` a side), an instance
        embedding; per image an image embedding. With ``paste_masks`` also ``masks`` (n, 1, H, W)
        as ``model(images)`` returns them; with ``roi_features`` the mask-IoU head's input
        features. Models with the ``mask_iou_head`` capability add ``pred_iou``. Sets eval mode."""

    def prediction_sets(self, image: Tensor, gt_boxes: Tensor, gt_labels: Tensor, match_iou: float | None = None,
                        scale: int | None = None, flip: bool = False) -> list[tuple[Tensor, Tensor]]:
        """APIS's prediction set of each ground-truth instance (apis-active-pointly-supervised.txt
        Sec. 3.2): the mask probabilities of the instance's class from every member of its set.

        image (3, H, W) float in [0, 1]; gt_boxes (G, 4) xyxy in its pixels; gt_labels (G,) 1..C.
        ``match_iou``: the family's matching threshold (None: its training threshold); ``scale``:
        the input's short side for this run (None: the model's own size; the long-side limit scales
        with it); ``flip``: run on the horizontally mirrored image and map the results back. The
        model is left as it was (no size or state changed).

        Returns per instance (probs (K, h, w) float in [0, 1], frames (K, 4) float xyxy): map k
        covers the box frames[k] of the original image in the box frame (``MASK_FRAME``); K = 0 when
        the instance has no member. Mask R-CNN: the RPN proposals matched to the instance (box IoU
        >= match_iou), each its M x M RoI mask over the proposal box.
        """
        if PREDICTION_SETS not in self.capabilities:
            raise NotImplementedError(f"{type(self).__name__} offers no prediction sets")
        if not flip:
            return self._prediction_sets_once(image, gt_boxes, gt_labels, match_iou, scale)
        w, dev = image.shape[-1], gt_boxes.device
        fboxes = (gt_boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1], device=dev)
                  + torch.tensor([w, 0.0, w, 0], device=dev))
        flipped = self._prediction_sets_once(image.flip(-1), fboxes, gt_labels, match_iou, scale)
        return [(p.flip(-1), b[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1], device=b.device)
                 + torch.tensor([w, 0.0, w, 0], device=b.device)) for p, b in flipped]

    def _prediction_sets_once(self, image: Tensor, gt_boxes: Tensor, gt_labels: Tensor, match_iou: float | None,
                              scale: int | None) -> list[tuple[Tensor, Tensor]]:
        """``prediction_sets`` without the flip (families with the capability implement it)."""
        raise NotImplementedError(f"{type(self).__name__} offers no prediction sets")

    def train_mask_iou_head(self, dataset, device: str = "cpu", batch_size: int = 4, seed: int = 0,
                            progress: bool = True) -> dict[str, float]:
        """Fit the mask-IoU head on the model's (frozen) detections on ``dataset`` (a
        ``TrainingSet``); returns loss figures for the round record (``train/...`` keys)."""
        raise NotImplementedError(f"{type(self).__name__} has no mask-IoU head")


def check_training_targets(targets) -> None:
    """The training-call checks of torchvision's detection models: targets given, boxes float,
    labels int64; ValueError / TypeError otherwise (a programming error, not a user input)."""
    if targets is None:
        raise ValueError("targets should not be None in training")
    for t in targets:
        if t["boxes"].dtype not in (torch.float, torch.double, torch.half):
            raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
        if t["labels"].dtype != torch.int64:
            raise TypeError(f"target labels must be of int64 type, got {t['labels'].dtype}")


def check_model(model, what: str = "model") -> InstanceSegmenter:
    """``model`` when it implements the interface, else a one-line ConfigError naming ``what``."""
    if not isinstance(model, InstanceSegmenter):
        raise ConfigError(f"{what}: _target_ built a {type(model).__module__}.{type(model).__name__}, not an alseg "
                          f"model (a subclass of alseg.models.base.InstanceSegmenter); use a builder such as "
                          f"alseg.models.maskrcnn.build_maskrcnn")
    unknown = sorted(set(model.capabilities) - CAPABILITIES)
    if unknown or model.class_prob_layout not in CLASS_PROB_LAYOUTS:
        raise ConfigError(f"{what}: {type(model).__name__} declares capabilities {unknown} / class_prob_layout "
                          f"{model.class_prob_layout!r}; known: {sorted(CAPABILITIES)} / {list(CLASS_PROB_LAYOUTS)}")
    return model


# --------------------------------------------------------------------------- class scores
def class_distribution(class_probs: np.ndarray, layout: str) -> np.ndarray:
    """Per-detection class distribution (n, C + 1), background at column 0, rows summing to 1: the
    layout TAUDIS's classification margin and entropy read (``taudis_core``: they drop column 0
    and renormalise the foreground, i.e. use p(class | object)).

    - ``softmax_with_background`` (n, C + 1): returned unchanged (same array, same numbers).
    - ``sigmoid`` (n, C) scores s_c of C independent binary classifiers (FCOS / CondInst, trained
      with the focal loss): they form no distribution over classes. We take p(class c | object) =
      s_c / sum_k s_k (the scores normalised over the classes) and p(background) = 1 - max_c s_c
      (the best class's own "not this class" probability), so a row is
      [1 - m, m * s / sum(s)] with m = max_c s_c. CM and CE then depend on the normalised scores
      only: CM = (s_(1) - s_(2)) / sum(s), CE = entropy of s / sum(s). A row of zeros gives
      [1, 0, ..., 0] (taudis_core takes its foreground as uniform). Float64.
    """
    p = np.asarray(class_probs)
    if layout == SOFTMAX_WITH_BACKGROUND:
        return p
    if layout != SIGMOID:
        raise ValueError(f"class_prob_layout must be one of {CLASS_PROB_LAYOUTS}, got {layout!r}")
    if p.ndim != 2:
        raise ValueError(f"sigmoid class scores must be (n, C), got shape {p.shape}")
    s = p.astype(np.float64)
    total = s.sum(axis=1, keepdims=True)
    best = s.max(axis=1, keepdims=True) if s.shape[1] else np.zeros((len(s), 1))
    fg = np.divide(s, total, out=np.zeros_like(s), where=total > 0) * best
    return np.concatenate([1.0 - best, fg], axis=1)


def class_prob_columns(layout: str, num_classes: int) -> int:
    """The number of ``class_probs`` columns of a layout for ``num_classes`` foreground classes."""
    return num_classes + 1 if layout == SOFTMAX_WITH_BACKGROUND else num_classes


# --------------------------------------------------------------------------- mask frames
def image_masks_to_box(masks: Tensor, boxes: Tensor, size: int, stride: float = 1.0) -> Tensor:
    """Box-frame maps (n, size, size) of full-image mask probabilities ``masks`` (n, h, w), map i
    cropped to ``boxes[i]`` (xyxy in image pixels; the maps are at 1 / ``stride`` of that frame,
    e.g. CondInst's stride-4 masks of the resized input with boxes in resized-input pixels).

    Bilinear samples at the cell centres of ``MASK_FRAME`` (``roi_align`` with ``aligned=True``:
    map pixel j covers image pixels [j * stride, (j + 1) * stride), centre (j + 0.5) * stride), 2 x
    2 samples per cell averaged; samples outside the map read 0."""
    from torchvision.ops import roi_align

    n = masks.shape[0]
    if n == 0:
        return masks.new_zeros((0, size, size))
    rois = torch.cat([torch.arange(n, dtype=boxes.dtype, device=boxes.device)[:, None], boxes], 1).to(masks.dtype)
    return roi_align(masks[:, None], rois, (size, size), spatial_scale=1.0 / stride, sampling_ratio=2,
                     aligned=True)[:, 0]


# --------------------------------------------------------------------------- weights and checkpoints
def fetch_torchvision_weights(weights_enum, what: str, timeout_s: float = 20.0) -> dict:
    """The state dict of a torchvision weights enum member (downloaded, or from
    ``$TORCH_HOME/hub/checkpoints``); one ConfigError naming ``model.<what>`` (never a hang) when
    it cannot be had."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        return weights_enum.get_state_dict(progress=False, check_hash=False)
    except Exception as e:  # urllib / socket / hash errors all mean the same to the user
        raise ConfigError(
            f"model.{what}: cannot fetch torchvision weights {weights_enum} ({type(e).__name__}: {e}); "
            f"put the file in $TORCH_HOME/hub/checkpoints or set model.{what}=null / model.checkpoint=PATH"
        ) from None
    finally:
        socket.setdefaulttimeout(old)


def resolve_weights(spec: str | None, family, what: str):
    """The member of torchvision weights enum ``family`` named ``spec`` ("DEFAULT" allowed), None
    for no weights; ConfigError listing the choices for an unknown name."""
    if spec in (None, "", "none", "null"):
        return None
    try:
        return family[spec] if spec != "DEFAULT" else family.DEFAULT
    except KeyError:
        raise ConfigError(f"model.{what}: unknown weights {spec!r}; choose from {[w.name for w in family]}") from None


def load_checkpoint(model: nn.Module, path: str) -> None:
    """Load a local checkpoint (``{"model": state_dict}`` as alseg saves it, or a bare state dict)
    into ``model``, non-strictly; ConfigError when the file is missing, unreadable, or shares no
    key with the model / has keys it lacks."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.checkpoint: file not found: {p}")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"model.checkpoint: {p} is not a readable torch checkpoint ({type(e).__name__})") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else blob
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or len(missing) == len(model.state_dict()):
        raise ConfigError(f"model.checkpoint: {p} does not match this model ({len(unexpected)} unexpected keys)")


def resized_copy(module: nn.Module, **attrs) -> nn.Module:
    """A shallow copy of ``module`` with ``attrs`` set on the copy only (the original, shared
    submodules and parameters untouched): e.g. a transform at another input size."""
    twin = copy.copy(module)
    for k, v in attrs.items():
        setattr(twin, k, v)
    return twin
