import pytest
import torch
from torchvision.models import resnet18

from alseg.errors import ConfigError
from alseg.models.maskrcnn import build_maskrcnn, load_checkpoint


def test_small_model_trains_and_predicts_on_a_batch():
    torch.manual_seed(0)
    m = build_maskrcnn(3, min_size=64, max_size=64)
    img = torch.rand(3, 64, 64)
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 10:40] = 1
    target = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([2]), "masks": masks}
    losses = m([img], [target])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    m.eval()
    with torch.no_grad():
        out = m([img])[0]
    assert out["masks"].shape[1:] == (1, 64, 64)
    # The class head has background + 3 classes.
    assert m.roi_heads.box_predictor.cls_score.out_features == 4


def test_backbone_weights_load_from_the_torchvision_cache(tmp_path, monkeypatch):
    """The real torchvision weights path, fed from $TORCH_HOME (no network)."""
    from torchvision.models import ResNet18_Weights

    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.manual_seed(1)
    ref = resnet18()
    torch.save(ref.state_dict(), ckpt_dir / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = build_maskrcnn(2, backbone_weights="IMAGENET1K_V1", norm="frozen_bn", trainable_layers=3)
    assert torch.equal(m.backbone.body.conv1.weight, ref.conv1.weight)
    # Layers below trainable_layers are frozen.
    assert not m.backbone.body.conv1.weight.requires_grad and m.backbone.body.layer4[0].conv1.weight.requires_grad


def test_unknown_weights_and_checkpoint_errors(tmp_path):
    with pytest.raises(ConfigError, match="model.backbone_weights: unknown weights 'NOPE'"):
        build_maskrcnn(2, backbone_weights="NOPE")
    with pytest.raises(ConfigError, match="need backbone=resnet50"):
        build_maskrcnn(2, weights="DEFAULT")
    with pytest.raises(ConfigError, match="checkpoint: file not found"):
        build_maskrcnn(2, checkpoint=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    with pytest.raises(ConfigError, match="not a readable torch checkpoint"):
        build_maskrcnn(2, checkpoint=str(bad))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build_maskrcnn(2)
    torch.save({"model": a.state_dict()}, tmp_path / "m.pt")
    torch.manual_seed(5)
    b = build_maskrcnn(2)
    load_checkpoint(b, str(tmp_path / "m.pt"))
    assert torch.equal(a.roi_heads.mask_predictor.mask_fcn_logits.weight, b.roi_heads.mask_predictor.mask_fcn_logits.weight)
    other = build_maskrcnn(5)  # another class count: the heads do not match
    with pytest.raises(Exception):
        load_checkpoint(other, str(tmp_path / "m.pt"))
