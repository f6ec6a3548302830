"""Pictures of a run's predictions: ground truth and predicted masks side by side, for some images.

    python tools/visualize.py runs/exp/run_name [--round K] [--num-images 6] [--score-threshold 0.5]
                              [--image-ids 139 285] [--split val] [--device auto] [--out grid.png]

The model is rebuilt from the run's ``config.yaml`` and loaded from ``round_XXX/model.pt`` (default:
the last round with a checkpoint); the images come from the run's dataset config (val split), read
as training and evaluation read them (``alseg.data.images.read_image``, the EXIF frame of
``dataset.exif_orientation``), so drawn masks and pixels share one frame.
Without ``--out`` the grid is saved as ``round_XXX/predictions.png`` in the run folder.

Every ground-truth object has its own colour; a prediction matched to it (``match_instances``: mask
IoU >= 0.5, one to one, any class) is drawn in that colour in the prediction panel. A prediction
matching no object (false positive) gets a grey dashed outline labelled "FP"; an object no
prediction matches gets a dashed outline of its ground-truth mask, in its colour, labelled "missed".
A caption under the grid says so.

``draw_instances`` (OpenCV: semi-transparent fill, contour, class label) is reusable on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from alseg.errors import AlsegError, ConfigError, DataError
from alseg.instantiate import build
from alseg.masks import mask_overlaps
from alseg.plots import save_figure

PROG = "visualize"

# Distinct colours (RGB, tab10 then tab20's lighter half); by default (draw_instances without
# colors) class k (1-based) gets PALETTE[(k - 1) % n].
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)


# One colour per ground-truth object in visualize's grid: the palette less its greys, kept for false positives.
FP_COLOR = (127, 127, 127)
OBJECT_PALETTE = tuple(c for c in PALETTE if len(set(c)) > 1)
MATCH_IOU = 0.5


def color_for(label: int) -> tuple[int, int, int]:
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def object_color(index: int) -> tuple[int, int, int]:
    """The colour (RGB) of the ``index``-th (0-based) ground-truth object of an image."""
    return OBJECT_PALETTE[int(index) % len(OBJECT_PALETTE)]


@dataclass(frozen=True)
class Matching:
    """Predictions matched one to one to ground-truth objects of one image.

    pairs: (gt index, prediction index, mask IoU) sorted by gt index; false_positives: prediction
    indices matched to no object; missed: gt indices no prediction is matched to (both sorted)."""

    pairs: list[tuple[int, int, float]]
    false_positives: list[int]
    missed: list[int]


def match_instances(gt_masks: np.ndarray, pred_masks: np.ndarray, iou_threshold: float = MATCH_IOU) -> Matching:
    """Match predictions to ground-truth objects by mask IoU, ignoring classes (the same object
    keeps its colour even when its class is wrong; the labels show both classes).

    gt_masks (n, H, W), pred_masks (m, H, W): binary masks of one image (nonzero is foreground).
    The pairs are the one-to-one assignment of largest summed IoU among pairs with IoU >=
    ``iou_threshold`` (Hungarian method, ``scipy.optimize.linear_sum_assignment``); COCO's 0.5 by
    default. Raises ValueError when the two stacks are not of one image size."""
    from scipy.optimize import linear_sum_assignment

    gt_masks, pred_masks = np.asarray(gt_masks), np.asarray(pred_masks)
    if gt_masks.ndim != 3 or pred_masks.ndim != 3 or gt_masks.shape[1:] != pred_masks.shape[1:]:
        raise ValueError(f"match_instances: masks of shapes {gt_masks.shape} and {pred_masks.shape}; "
                         "expected (n, H, W) and (m, H, W)")
    n, m = len(gt_masks), len(pred_masks)
    pairs = []
    if n and m:
        iou = mask_overlaps(gt_masks, pred_masks)[0]
        gain = np.where(iou >= iou_threshold, iou, 0.0)  # a pair below the threshold gains nothing
        rows, cols = linear_sum_assignment(gain, maximize=True)
        pairs = [(int(g), int(p), float(iou[g, p])) for g, p in zip(rows, cols) if iou[g, p] >= iou_threshold]
    return Matching(pairs, sorted(set(range(m)) - {p for _, p, _ in pairs}),
                    sorted(set(range(n)) - {g for g, _, _ in pairs}))


def class_name(label: int, class_names: Sequence[str]) -> str:
    """Labels are 1-based (0 is background), as CocoDataset and the model use them."""
    return class_names[label - 1] if 1 <= label <= len(class_names) else str(label)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"draw_instances: expected an RGB image (H, W, 3), got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        if img.size and img.max() <= 1.0:
            img = img * 255.0
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img).copy()


def _draw_dashed(out: np.ndarray, contours, color: tuple[int, int, int], thickness: int, dash: int) -> None:
    """Draw closed point sequences (OpenCV contours, (k, 1, 2) int) dashed: ``dash`` points on, ``dash`` off."""
    for c in contours:
        pts = np.concatenate([c.reshape(-1, 2), c.reshape(-1, 2)[:1]])  # closed
        for start in range(0, len(pts) - 1, 2 * dash):
            seg = pts[start:start + dash + 1]
            if len(seg) > 1:
                cv2.polylines(out, [seg.astype(np.int32)], False, color, thickness, cv2.LINE_AA)


def draw_instances(image_rgb: np.ndarray, masks: np.ndarray | None, labels: Sequence[int], class_names: Sequence[str],
                   boxes: np.ndarray | None = None, scores: Sequence[float] | None = None, alpha: float = 0.5,
                   thickness: int | None = None, font_scale: float | None = None,
                   colors: Sequence[tuple[int, int, int]] | None = None, texts: Sequence[str] | None = None,
                   dashed: Sequence[bool] | None = None) -> np.ndarray:
    """A copy of ``image_rgb`` (H, W, 3; uint8, or float in [0, 1]) with instances drawn on it.

    masks: (n, H, W) bool/uint8 or None; labels: n 1-based class labels (name = class_names[label - 1]);
    boxes: optional (n, 4) xyxy, drawn as rectangles; scores: optional, appended to the label text.
    Each instance gets a semi-transparent fill and a contour in its colour (``colors[i]``, RGB;
    default its class colour) and a text label (``texts[i]``; default class name and score) at the
    top-left of its box (or of its mask). An instance with ``dashed[i]`` gets only a dashed outline
    of its mask (else of its box), no fill and no box, and its label below it where it fits. Returns
    a new uint8 RGB array; the input is unchanged. Raises ValueError when the per-instance
    arguments do not have n entries.
    """
    out = _as_rgb_uint8(image_rgb)
    h, w = out.shape[:2]
    labels = [int(v) for v in np.asarray(labels).reshape(-1)]
    n = len(labels)
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim == 2 and n == 1:
            masks = masks[None]
        if masks.shape != (n, h, w):
            raise ValueError(f"draw_instances: masks of shape {masks.shape} for {n} labels on a {h}x{w} image")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        if len(boxes) != n:
            raise ValueError(f"draw_instances: {len(boxes)} boxes for {n} labels")
    for what, v in (("scores", scores), ("colors", colors), ("texts", texts), ("dashed", dashed)):
        if v is not None and len(v) != n:
            raise ValueError(f"draw_instances: {len(v)} {what} for {n} labels")
    colors = [tuple(int(c) for c in colors[i]) if colors is not None else color_for(labels[i]) for i in range(n)]
    dashed = [bool(d) for d in dashed] if dashed is not None else [False] * n
    thickness = thickness or max(1, round(min(h, w) / 250))
    font_scale = font_scale or float(np.clip(min(h, w) / 900, 0.3, 1.2))
    font = cv2.FONT_HERSHEY_SIMPLEX

    dash = max(3, round(min(h, w) / 80))
    anchors: list[tuple[int, int, int] | None] = [None] * n  # left, top, bottom
    for i in range(n):
        color = np.array(colors[i], dtype=np.float32)
        m = masks[i].astype(bool) if masks is not None else None
        if m is not None and m.any():
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            if dashed[i]:
                _draw_dashed(out, contours, colors[i], max(2, thickness), dash)
            else:
                out[m] = ((1 - alpha) * out[m] + alpha * color).round().astype(np.uint8)
                # Thickness 1 keeps the contour on the mask's own boundary pixels.
                cv2.drawContours(out, contours, -1, colors[i], 1)
            ys, xs = np.nonzero(m)
            anchors[i] = (int(xs.min()), int(ys.min()), int(ys.max()) + 1)
        if boxes is not None:
            x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
            if not dashed[i]:
                cv2.rectangle(out, (x1, y1), (x2, y2), colors[i], thickness)
            elif anchors[i] is not None:  # the mask's outline stands for the box; the label stays at the mask
                continue
            else:  # no mask to outline: the box's
                r = cv2.rectangle(np.zeros((h, w), np.uint8), (x1, y1), (x2, y2), 1, -1)
                _draw_dashed(out, cv2.findContours(r, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0], colors[i],
                             max(2, thickness), dash)
            anchors[i] = (x1, y1, y2)
    # Labels last, so no fill covers them.
    for i in range(n):
        if anchors[i] is None:
            continue
        if texts is not None:
            text = texts[i]
        else:
            text = class_name(labels[i], class_names)
            if scores is not None:
                text += f" {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, font, font_scale, 1)
        x, y, bottom = anchors[i]
        x = int(np.clip(x, 0, max(0, w - tw - 2)))
        top = y - th - base - 2 if y - th - base - 2 >= 0 else y  # above the object, else just inside it
        if dashed[i] and bottom + th + base + 2 < h:  # below: clear of a matched prediction's label on the object
            top = bottom + 1
        top = int(np.clip(top, 0, max(0, h - th - base - 2)))
        color = colors[i]
        cv2.rectangle(out, (x, top), (x + tw + 2, top + th + base + 2), color, -1)
        light = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 150
        cv2.putText(out, text, (x + 1, top + th + 1), font, font_scale, (0, 0, 0) if light else (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


# --------------------------------------------------------------------------- run folder -> grid
def checkpoint_rounds(run_dir: Path) -> list[int]:
    out = []
    for d in run_dir.glob("round_*"):
        if (d / "model.pt").is_file() and d.name[6:].isdigit():
            out.append(int(d.name[6:]))
    return sorted(out)


def load_run(run_dir: str | Path, round_index: int | None = None, device: str = "cpu"):
    """(config, data splits, model in eval mode, round) of a run folder's checkpoint."""
    import torch
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(f"{run_dir}: not a run folder (no config.yaml)")
    try:
        cfg = OmegaConf.load(cfg_path)
    except Exception as e:
        raise DataError(f"{cfg_path}: cannot be read ({' '.join(str(e).split())})") from None
    rounds = checkpoint_rounds(run_dir)
    if round_index is None:
        if not rounds:
            raise DataError(f"{run_dir}: no round_XXX/model.pt checkpoint")
        round_index = rounds[-1]
    elif round_index not in rounds:
        raise DataError(f"{run_dir / f'round_{round_index:03d}' / 'model.pt'}: no such checkpoint "
                        f"(rounds with one: {', '.join(map(str, rounds)) or 'none'})")
    data = build(cfg.dataset, "dataset")
    model_cfg = cfg.model.copy()
    for key in ("weights", "backbone_weights", "checkpoint"):  # the checkpoint below holds every weight
        if key in model_cfg:
            model_cfg[key] = None
    model = build(model_cfg, "model", num_classes=data.train.num_classes)
    ckpt = run_dir / f"round_{round_index:03d}" / "model.pt"
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
        model.load_state_dict(state)
    except Exception as e:
        raise DataError(f"{ckpt}: cannot be loaded into the run's model ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]})") from None
    model.to(device).eval()
    return cfg, data, model, round_index


def _enlarge(masks: np.ndarray, f: int) -> np.ndarray:
    return np.asarray(masks).repeat(f, axis=-2).repeat(f, axis=-1)


CAPTION = (f"Each ground-truth object has its own colour; a prediction matched to it (mask IoU >= {MATCH_IOU:g}, "
           "one to one, any class) has the same colour. Grey dashed 'FP': a prediction matching no object. "
           "Dashed 'missed': an object no prediction matches (its ground-truth outline).")


def grid_figure(panels: list[tuple[np.ndarray, np.ndarray]], titles: list[tuple[str, str]], suptitle: str = "",
                caption: str = ""):
    """The figure of ``render_grid`` (matplotlib Figure, open; the caller saves or closes it): one
    row per image, (ground truth, prediction) RGB uint8 panels with their titles; ``suptitle`` above
    and ``caption`` below, kept clear of the panels by constrained layout."""
    import textwrap

    from alseg.plots import plt

    rows = len(panels)
    aspect = max(p[0].shape[0] / p[0].shape[1] for p in panels) if panels else 1.0
    fig = plt.figure(figsize=(10, max(2.0, 5 * aspect) * rows + 0.6 + 0.4 * bool(caption)), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False) if rows else np.zeros((0, 2))
    for r, ((gt, pred), (t_gt, t_pred)) in enumerate(zip(panels, titles)):
        for c, (img, t) in enumerate(((gt, t_gt), (pred, t_pred))):
            axes[r, c].imshow(img)
            axes[r, c].set_title(t, fontsize=9)
            axes[r, c].axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    if caption:
        fig.supxlabel(textwrap.fill(caption, 150), fontsize=8)
    return fig


def render_grid(panels: list[tuple[np.ndarray, np.ndarray]], titles: list[tuple[str, str]], path: str | Path,
                suptitle: str = "", caption: str = "") -> Path:
    """Write ``grid_figure(panels, titles, suptitle, caption)`` to ``path`` (PNG, 100 dpi); returns
    the path. Raises DataError when it cannot be written."""
    return save_figure(grid_figure(panels, titles, suptitle, caption), path)


def _box_masks(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Filled boxes (n, 4) xyxy as masks (n, h, w) bool: the shapes of a model without a mask branch."""
    out = np.zeros((len(boxes), h, w), bool)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, float).reshape(-1, 4)):
        out[i, max(0, int(np.floor(y1))):int(np.ceil(y2)), max(0, int(np.floor(x1))):int(np.ceil(x2))] = True
    return out


def prediction_panel(img: np.ndarray, gt_masks: np.ndarray, gt_labels: Sequence[int], pred_masks: np.ndarray,
                     pred_labels: Sequence[int], pred_scores: Sequence[float], class_names: Sequence[str],
                     pred_boxes: np.ndarray | None = None, scale: int = 1) -> tuple[np.ndarray, np.ndarray, Matching]:
    """(ground-truth panel, prediction panel, matching) of one image, colours as the module says.

    img (H*scale, W*scale, 3) uint8; gt_masks (n, H, W) and pred_masks (m, H, W) bool at the
    image's own size (matched there; drawn enlarged ``scale`` times, nearest neighbour);
    pred_boxes (m, 4) xyxy in the original image's pixels, drawn for matched predictions."""
    names = class_names
    match = match_instances(gt_masks, pred_masks)
    gt_colors = [object_color(i) for i in range(len(gt_labels))]
    gt_big, pred_big = (_enlarge(gt_masks, scale), _enlarge(pred_masks, scale)) if scale > 1 else (gt_masks, pred_masks)
    gt = draw_instances(img, gt_big, gt_labels, names, colors=gt_colors)
    of_pred = {p: g for g, p, _ in match.pairs}
    m = len(pred_labels)
    colors = [gt_colors[of_pred[i]] if i in of_pred else FP_COLOR for i in range(m)]
    texts = [("" if i in of_pred else "FP ") + f"{class_name(int(pred_labels[i]), names)} {float(pred_scores[i]):.2f}"
             for i in range(m)]
    dashed = [i not in of_pred for i in range(m)]
    boxes = None
    miss = match.missed
    if pred_boxes is not None:  # a missed object is drawn from its mask; its row of boxes is not used
        boxes = np.concatenate([np.asarray(pred_boxes, float).reshape(-1, 4) * scale, np.zeros((len(miss), 4))])
    pred = draw_instances(img, np.concatenate([pred_big, gt_big[miss]]),
                          [*map(int, pred_labels), *(int(gt_labels[g]) for g in miss)], names, boxes=boxes,
                          colors=colors + [gt_colors[g] for g in miss],
                          texts=texts + [f"missed {class_name(int(gt_labels[g]), names)}" for g in miss],
                          dashed=dashed + [True] * len(miss))
    return gt, pred, match


def visualize_run(run_dir: str | Path, round_index: int | None = None, num_images: int = 6,
                  image_ids: Sequence[int] | None = None, score_threshold: float = 0.5, split: str = "val",
                  device: str = "cpu", out: str | Path | None = None, progress: bool = False,
                  min_side: int = 320) -> Path:
    """Draw ground truth | prediction for some images of a run's split; save the grid PNG; return its path.

    Predictions with score >= ``score_threshold`` are matched to the ground truth and drawn as the
    module says (a model without masks: its boxes stand for its masks)."""
    from alseg.data.torch_dataset import read_image
    from alseg.predictions import predict

    run_dir = Path(run_dir)
    cfg, data, model, k = load_run(run_dir, round_index, device)
    ds = getattr(data, split)
    if image_ids:
        unknown = [i for i in image_ids if i not in ds.by_id]
        if unknown:
            raise DataError(f"{ds.source}: image id(s) {unknown} not in the {split} split")
        ids = list(image_ids)
    else:
        ids = ds.image_ids[:num_images]
    names = ds.class_names
    panels, titles = [], []
    for image_id, boxes, scores, labels, masks in predict(model, ds, image_ids=ids, device=device,
                                                          batch_size=int(cfg.get("eval", {}).get("batch_size", 4)),
                                                          desc="visualize", progress=progress):
        rec = ds.by_id[image_id]
        img = read_image(rec)  # the frame of the masks and of the predictions (ImageSet reads the same way)
        h, w = img.shape[:2]
        gt_labels = [i.label for i in rec.instances]
        keep = scores >= score_threshold
        pm = masks[keep] if masks is not None else _box_masks(boxes[keep], h, w)
        # Small images (e.g. 64-pixel synthetic ones) are enlarged so the labels stay readable.
        f = max(1, int(np.ceil(min_side / min(h, w))))
        if f > 1:
            img = cv2.resize(img, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
        gt, pred, match = prediction_panel(img, rec.decode_masks().astype(bool), gt_labels, pm, labels[keep],
                                           scores[keep], names, pred_boxes=boxes[keep], scale=f)
        panels.append((gt, pred))
        titles.append((f"image {image_id}: ground truth ({len(gt_labels)})",
                       f"prediction, score >= {score_threshold:g}: {len(match.pairs)} matched, "
                       f"{len(match.false_positives)} FP, {len(match.missed)} missed"))
    sup = f"{run_dir} - round {k}"
    metrics_path = run_dir / f"round_{k:03d}" / "metrics.json"
    try:
        m = json.loads(metrics_path.read_text())
        sup += f" - {m.get('labeled_images', '?')} labeled images - mask AP {m['mask_AP']:.3f} (val)"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    out = Path(out) if out else run_dir / f"round_{k:03d}" / "predictions.png"
    return render_grid(panels, titles, out, sup, CAPTION)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available")
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="run folder (runs/<experiment>/<run>)")
    p.add_argument("--round", type=int, default=None, help="round whose model.pt to use (default: last one)")
    p.add_argument("--num-images", type=int, default=6, help="images to draw (default: 6, the first by id)")
    p.add_argument("--image-ids", type=int, nargs="+", help="these images instead")
    p.add_argument("--score-threshold", type=float, default=0.5, help="predictions drawn from this score (0.5)")
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N] or auto")
    p.add_argument("--out", type=Path, help="PNG path (default: RUN_DIR/round_XXX/predictions.png)")
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error("--num-images must be >= 1")
    try:
        path = visualize_run(args.run_dir, args.round, args.num_images, args.image_ids, args.score_threshold,
                             args.split, _device(args.device), args.out)
    except AlsegError as e:
        p.exit(2, f"{PROG}: error: {' '.join(str(e).split())}\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
