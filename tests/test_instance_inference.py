import torch

from alseg.models.instance_inference import anchor_predictions, predict_instances
from alseg.models.maskrcnn import build_maskrcnn


def test_instance_records_match_torchvision_forward():
    torch.manual_seed(0)
    # An untrained model with no score threshold still yields many detections to compare.
    model = build_maskrcnn(3, min_size=64, max_size=64, box_score_thresh=0.0, box_detections_per_img=30).eval()
    images = [torch.rand(3, 48, 64), torch.rand(3, 80, 60)]
    with torch.no_grad():
        ref = model(images)
    ours = predict_instances(model, images, paste_masks=True)
    for r, o, im in zip(ref, ours, images):
        assert len(r["boxes"]) > 0
        torch.testing.assert_close(o["boxes"], r["boxes"])
        torch.testing.assert_close(o["scores"], r["scores"])
        assert torch.equal(o["labels"], r["labels"])
        torch.testing.assert_close(o["masks"], r["masks"])
        n = len(o["labels"])
        # The class distribution of each detection: sums to 1 and holds the detection's score.
        torch.testing.assert_close(o["class_probs"].sum(1), torch.ones(n))
        torch.testing.assert_close(o["class_probs"][torch.arange(n), o["labels"]], o["scores"])
        assert o["mask_probs"].shape == (n, 28, 28) and o["embeddings"].shape == (n, 64)
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
    assert (pp.areas >= 0).all()


def test_anchor_predictions_are_the_proposals_matched_to_each_instance():
    from torchvision.ops import box_iou

    torch.manual_seed(0)
    model = build_maskrcnn(2, min_size=64, max_size=64).eval()
    image = torch.rand(3, 64, 64)
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0], [0.0, 0.0, 2.0, 2.0]])
    sets = anchor_predictions(model, image, gt, torch.tensor([1, 2]), iou_threshold=0.3)
    assert len(sets) == 2
    probs, boxes = sets[0]
    assert probs.shape[1:] == (28, 28) and len(probs) == len(boxes) > 0
    assert (box_iou(gt[:1], boxes) >= 0.3 - 1e-4).all()
    assert ((probs >= 0) & (probs <= 1)).all()
    # A 2-pixel instance has no matching proposal: an empty set (K = 0).
    assert sets[1][0].shape == (0, 28, 28) and sets[1][1].shape == (0, 4)
