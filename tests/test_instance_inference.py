import torch

from alseg.models.maskrcnn import build_maskrcnn


def test_instance_records_match_torchvision_forward():
    """Every field against a reference taken from torchvision's own forward of the same model, on
    the same call: equal bitwise."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    torch.manual_seed(0)
    # An untrained model with no score threshold still yields many detections to compare.
    model = build_maskrcnn(3, min_size=64, max_size=64, box_score_thresh=0.0, box_detections_per_img=30).eval()
    images = [torch.rand(3, 48, 64), torch.rand(3, 80, 60)]
    seen = {}
    hooks = [model.roi_heads.mask_head.register_forward_hook(lambda m, i, o: seen.setdefault("mask_head", o)),
             model.backbone.register_forward_hook(lambda m, i, o: seen.setdefault("fpn", o))]
    with torch.no_grad():
        ref = model(images)
    for h in hooks:
        h.remove()
    ours = model.predict_instances(images, paste_masks=True)
    per_image = [len(r["labels"]) for r in ref]
    ref_emb = seen["mask_head"].mean(dim=(2, 3)).split(per_image)
    for k, (r, o, im) in enumerate(zip(ref, ours, images)):
        n = len(o["labels"])
        assert n > 0
        for key in ("boxes", "scores", "labels", "masks"):
            assert torch.equal(o[key], r[key]), key
        # The class distribution of each detection: sums to 1 and holds the detection's score.
        torch.testing.assert_close(o["class_probs"].sum(1), torch.ones(n))
        assert torch.equal(o["class_probs"][torch.arange(n), o["labels"]], o["scores"])
        assert o["mask_probs"].shape == (n, 28, 28) == (n, model.mask_size, model.mask_size)
        # The box-frame masks are what torchvision pastes into the image.
        assert torch.equal(paste_masks_in_image(o["mask_probs"][:, None], o["boxes"], im.shape[-2:]), r["masks"])
        assert torch.equal(o["embeddings"], ref_emb[k]) and o["embeddings"].shape == (n, 64)
        assert torch.equal(o["image_embedding"], seen["fpn"]["0"][k].mean(dim=(1, 2)))
        assert o["image_embedding"].shape == (64,)


def test_pool_inference_keeps_compact_arrays(tmp_path):
    import numpy as np

    from alseg.data.build import synthetic
    from alseg.engine.pool_inference import infer_pool

    data = synthetic(cache_dir=str(tmp_path), num_train=5, num_val=1, image_size=64, max_radius=20)
    torch.manual_seed(0)
    model = build_maskrcnn(data.train.num_classes, min_size=64, max_size=64, box_score_thresh=0.0,
                           box_detections_per_img=7)
    ids = data.train.image_ids[:3]
    pp = infer_pool(model, data.train, ids, batch_size=2, progress=False)
    assert pp.image_ids == ids and len(pp) == 21  # 7 detections per image, untrained model
    assert np.bincount(pp.image_index).tolist() == [7, 7, 7]
    assert pp.mask_probs.dtype == np.float16 and pp.mask_probs.shape == (21, 28, 28)
    assert pp.class_probs.shape == (21, data.train.num_classes + 1) and pp.image_embeddings.shape == (3, 64)
    assert pp.class_prob_layout == "softmax_with_background" and pp.class_distribution() is pp.class_probs
    assert (pp.areas >= 0).all() and pp.pred_iou is None
    # No detection at all: empty arrays of the model's sizes.
    model.roi_heads.score_thresh = 1.1
    empty = infer_pool(model, data.train, ids[:1], progress=False)
    assert empty.mask_probs.shape == (0, 28, 28) and empty.class_probs.shape == (0, data.train.num_classes + 1)


def test_anchor_predictions_are_the_proposals_matched_to_each_instance():
    from torchvision.ops import box_iou

    torch.manual_seed(0)
    model = build_maskrcnn(2, min_size=64, max_size=64).eval()
    image = torch.rand(3, 64, 64)
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0], [0.0, 0.0, 2.0, 2.0]])
    sets = model.prediction_sets(image, gt, torch.tensor([1, 2]), match_iou=0.3)
    assert len(sets) == 2
    probs, boxes = sets[0]
    assert probs.shape[1:] == (28, 28) and len(probs) == len(boxes) > 0
    assert (box_iou(gt[:1], boxes) >= 0.3 - 1e-4).all()
    assert ((probs >= 0) & (probs <= 1)).all()
    # A 2-pixel instance has no matching proposal: an empty set (K = 0).
    assert sets[1][0].shape == (0, 28, 28) and sets[1][1].shape == (0, 4)
    # The old function names still answer, through the interface.
    from alseg.models.instance_inference import anchor_predictions

    again = anchor_predictions(model, image, gt, torch.tensor([1, 2]), 0.3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(sets, again))
