import torch

from alseg.models.instance_inference import predict_instances
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
