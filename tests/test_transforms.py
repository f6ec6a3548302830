import numpy as np
import pytest

from alseg.data.transforms import BrightnessContrast, HorizontalFlip, ScaleJitter, build_transforms
from alseg.errors import ConfigError


def _sample():
    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 0] = np.arange(30)[None, :]
    masks = np.zeros((2, 20, 30), np.uint8)
    masks[0, 2:6, 3:10] = 1  # box x 3..10, y 2..6
    masks[1, 10:18, 20:28] = 1
    return {
        "image": img,
        "boxes": np.array([[3, 2, 10, 6], [20, 10, 28, 18]], np.float32),
        "labels": np.array([1, 2]),
        "masks": masks,
        "has_mask": np.array([True, True]),
        "ann_ids": np.array([11, 12]),
        "points": np.array([[0, 4.5, 3.5, 1], [1, 5.0, 15.0, 0]], np.float32),
    }


class _Always:
    """rng stand-in: random() below any p, uniform() returns a fixed value, integers() its low end."""

    def __init__(self, u):
        self.u = u

    def random(self):
        return 0.0

    def uniform(self, lo, hi):
        return self.u

    def integers(self, lo, hi):
        return lo


def test_hflip_moves_image_masks_boxes_points_together():
    s = HorizontalFlip(1.0)(_sample(), _Always(0))
    assert s["image"][0, 0, 0] == 29
    # box x 3..10 in a 30-wide image becomes 20..27
    np.testing.assert_array_equal(s["boxes"][0], [20, 2, 27, 6])
    assert s["masks"][0, 2:6, 20:27].all() and s["masks"][0].sum() == 28
    assert s["points"][0, 1] == pytest.approx(25.5)
    # the labeled point still falls on its mask after the flip
    x, y = int(s["points"][0, 1]), int(s["points"][0, 2])
    assert s["masks"][0, y, x] == 1


def test_scale_jitter_up_crops_and_keeps_boxes_tight_to_masks():
    s = ScaleJitter(2.0, 2.0)(_sample(), _Always(2.0))
    assert s["image"].shape == (20, 30, 3) and s["masks"].shape[1:] == (20, 30)
    # Scale 2 with crop offset 0: instance 0 box becomes (6, 4, 20, 12); instance 1 leaves the canvas.
    assert len(s["boxes"]) == 1 and s["ann_ids"].tolist() == [11]
    np.testing.assert_allclose(s["boxes"][0], [6, 4, 20, 12])
    ys, xs = np.nonzero(s["masks"][0])
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (6, 4, 20, 12)
    # The point of the dropped instance is dropped; the other is rescaled and re-indexed.
    assert s["points"].tolist() == [[0, 9.0, 7.0, 1]]


def test_scale_jitter_down_pads():
    s = ScaleJitter(0.5, 0.5)(_sample(), _Always(0.5))
    np.testing.assert_allclose(s["boxes"], [[1.5, 1, 5, 3], [10, 5, 14, 9]])
    assert s["masks"][:, 10:, :].sum() == 0 and s["masks"][:, :, 15:].sum() == 0


def test_brightness_contrast_leaves_geometry():
    before = _sample()
    s = BrightnessContrast(0.5, 0.5)(_sample(), np.random.default_rng(0))
    np.testing.assert_array_equal(s["masks"], before["masks"])
    assert not np.array_equal(s["image"], before["image"])


def test_build_transforms_validates():
    assert len(build_transforms({"hflip": 0.5, "scale_jitter": [0.8, 1.2]}).transforms) == 2
    with pytest.raises(ConfigError, match="unknown key"):
        build_transforms({"rotate": 10})
    with pytest.raises(ConfigError, match="min_scale"):
        build_transforms({"scale_jitter": [1.5, 1.0]})
