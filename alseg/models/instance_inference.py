"""Mask R-CNN's per-instance inference: the family's implementation of ``predict_instances`` and
of the anchors prediction set (``alseg.models.maskrcnn.MaskRCNNSegmenter`` calls these; the rest of
alseg calls the interface methods). What torchvision's ``forward`` does not return: the full class
distribution of each detection, its mask probabilities at RoI resolution (no pasting to image
size), the mask-branch embedding, and an image embedding from the finest FPN level.

The detections (boxes, scores, labels) are exactly those of ``model(images)`` in eval mode: the
post-processing below is torchvision's ``RoIHeads.postprocess_detections`` with the source
proposal of each detection kept.

``predict_instances`` and ``anchor_predictions`` at the end are kept for existing imports: they
call the interface methods of any ``InstanceSegmenter``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops


def _postprocess_with_sources(rh, class_logits, box_regression, proposals, image_shapes):
    num_classes = class_logits.shape[-1]
    per_image = [p.shape[0] for p in proposals]
    pred_boxes = rh.box_coder.decode(box_regression, proposals).split(per_image, 0)
    pred_scores = F.softmax(class_logits, -1).split(per_image, 0)
    results = []
    for boxes, scores, shape in zip(pred_boxes, pred_scores, image_shapes):
        boxes = box_ops.clip_boxes_to_image(boxes, shape)
        n = boxes.shape[0]
        labels = torch.arange(num_classes, device=boxes.device).view(1, -1).expand(n, -1)
        source = torch.arange(n, device=boxes.device).view(-1, 1).expand(n, num_classes)
        # Drop the background column, then flatten (proposal, class) pairs as torchvision does.
        b, s = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1)
        lab, src = labels[:, 1:].reshape(-1), source[:, 1:].reshape(-1)
        keep = torch.where(s > rh.score_thresh)[0]
        b, s, lab, src = b[keep], s[keep], lab[keep], src[keep]
        keep = box_ops.remove_small_boxes(b, min_size=1e-2)
        b, s, lab, src = b[keep], s[keep], lab[keep], src[keep]
        keep = box_ops.batched_nms(b, s, lab, rh.nms_thresh)[: rh.detections_per_img]
        results.append({"boxes": b[keep], "scores": s[keep], "labels": lab[keep], "class_probs": scores[src[keep]]})
    return results


@torch.no_grad()
def maskrcnn_instances(model: MaskRCNN, images: list[torch.Tensor], paste_masks: bool = False,
                       roi_features: bool = False) -> list[dict]:
    """For each image: boxes (xyxy, original frame), scores, labels, class_probs (n, C+1; column 0
    background), mask_probs (n, M, M) of the predicted class, embeddings (n, D) (mask head output,
    average-pooled), image_embedding (D',) (mean of FPN level '0'); with ``paste_masks`` also masks
    (n, 1, H, W) probabilities, as ``model(images)`` returns them; with ``roi_features`` the mask
    branch's RoI-pooled features (n, C, R, R). A model with a mask-IoU head adds pred_iou (n,).
    M = 2 R (the mask predictor upsamples the R x R RoI twice); the M x M map covers the box."""
    model.eval()
    original_sizes = [tuple(im.shape[-2:]) for im in images]
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    rh = model.roi_heads
    box_features = rh.box_head(rh.box_roi_pool(features, proposals, image_list.image_sizes))
    class_logits, box_regression = rh.box_predictor(box_features)
    dets = _postprocess_with_sources(rh, class_logits, box_regression, proposals, image_list.image_sizes)
    pooled = rh.mask_roi_pool(features, [d["boxes"] for d in dets], image_list.image_sizes)
    mask_x = rh.mask_head(pooled)
    mask_logits = rh.mask_predictor(mask_x)
    labels = torch.cat([d["labels"] for d in dets])
    mask_probs = mask_logits[torch.arange(len(labels), device=labels.device), labels].sigmoid()
    embeddings = mask_x.mean(dim=(2, 3))
    per_image = [len(d["labels"]) for d in dets]
    image_emb = next(iter(features.values())).mean(dim=(2, 3))
    iou_head = getattr(model, "mask_iou_head", None)
    pred_iou = iou_head.predict(pooled, mask_probs) if iou_head is not None else None
    for i, (d, mp, emb) in enumerate(zip(dets, mask_probs.split(per_image), embeddings.split(per_image))):
        d["mask_probs"], d["embeddings"], d["image_embedding"] = mp, emb, image_emb[i]
    for name, value in (("roi_features", pooled if roi_features else None), ("pred_iou", pred_iou)):
        if value is not None:
            for d, v in zip(dets, value.split(per_image)):
                d[name] = v
    for d, size, original in zip(dets, image_list.image_sizes, original_sizes):
        # Back to the original image frame, exactly as torchvision's transform.postprocess does.
        d["boxes"] = resize_boxes(d["boxes"], size, original)
        if paste_masks:
            d["masks"] = paste_masks_in_image(d["mask_probs"][:, None], d["boxes"], original)
    return dets


@torch.no_grad()
def maskrcnn_anchor_sets(model: MaskRCNN, transform, image: torch.Tensor, gt_boxes: torch.Tensor,
                         gt_labels: torch.Tensor, iou_threshold: float | None = None
                         ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """APIS's multiple-anchors prediction set (Sec. 3.2 (a)): for each ground-truth instance, the
    RPN proposals that training would assign to it (box IoU >= the RoI heads' foreground threshold,
    or ``iou_threshold``), each giving the mask probabilities of the instance's known class at RoI
    resolution; ``transform`` resizes and normalises the image (the model's, or a copy at another
    input size).

    Returns, per ground-truth instance, (mask_probs (K, M, M) over each proposal box, proposal
    boxes (K, 4) in the original image frame); K = 0 when no proposal matches.
    """
    model.eval()
    rh = model.roi_heads
    thr = rh.proposal_matcher.high_threshold if iou_threshold is None else iou_threshold
    original = tuple(image.shape[-2:])
    image_list, _ = transform([image])
    size = image_list.image_sizes[0]
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    props = proposals[0]
    gt = resize_boxes(gt_boxes.to(props), original, size)
    if len(gt) == 0:
        return []
    iou = box_ops.box_iou(gt, props)  # (G, P)
    out = []
    for g in range(len(gt)):
        idx = torch.where(iou[g] >= thr)[0]
        if idx.numel() == 0:
            m = model.mask_size
            out.append((props.new_zeros((0, m, m)), props.new_zeros((0, 4))))
            continue
        boxes = props[idx]
        logits = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(features, [boxes], [size])))
        out.append((logits[:, int(gt_labels[g])].sigmoid(), resize_boxes(boxes, size, original)))
    return out


def predict_instances(model, images: list[torch.Tensor], paste_masks: bool = False,
                      roi_features: bool = False) -> list[dict]:
    """``model.predict_instances(images, paste_masks, roi_features)`` (kept for existing imports)."""
    return model.predict_instances(images, paste_masks=paste_masks, roi_features=roi_features)


def anchor_predictions(model, image: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                       iou_threshold: float | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``model.prediction_sets(image, gt_boxes, gt_labels, match_iou=iou_threshold)`` (kept for
    existing imports)."""
    return model.prediction_sets(image, gt_boxes, gt_labels, match_iou=iou_threshold)
