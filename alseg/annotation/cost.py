"""Annotation cost in seconds, with the defaults the papers use."""

from __future__ import annotations

from dataclasses import dataclass

from alseg.errors import ConfigError


@dataclass(frozen=True)
class CostTable:
    # Polygon mask of one COCO instance: 79.2 s (Lin et al. 2014, as cited by APIS Sec. 1).
    mask: float = 79.2
    # Box by extreme clicking: 7 s (Papadopoulos et al. 2017, APIS Sec. 1; mask-guided Sec. 3).
    box: float = 7.0
    # Is this point on the object? 0.9 s (PointSup, as cited by APIS Sec. 1).
    point: float = 0.9
    # Is class c present in the image? 1 s per class (mask-guided selection, Sec. 3).
    class_check: float = 1.0
    # A full image label checks the absent classes (1 s each) then draws every mask
    # (mask-guided selection, Sec. 3: t_full = absent classes x 1 s + masks x 79 s).
    image_checks_absent_classes: bool = True

    def __post_init__(self):
        for name in ("mask", "box", "point", "class_check"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"cost.{name}: must be a number >= 0 seconds, got {v!r}")

    def image(self, num_instances: int, num_present_classes: int, num_classes: int) -> float:
        checks = (num_classes - num_present_classes) if self.image_checks_absent_classes else 0
        return checks * self.class_check + num_instances * self.mask
