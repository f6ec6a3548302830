"""What a strategy asks the annotator: a whole image, one instance's mask, or one point."""

from __future__ import annotations

from dataclasses import asdict, dataclass

QUERY_KINDS = ("image", "instance", "point", "box")


@dataclass(frozen=True)
class Query:
    kind: str
    image_id: int
    ann_id: int | None = None  # instance, point and box queries name the ground-truth instance
    x: float | None = None  # point queries: pixel coordinates in the original image
    y: float | None = None
    score: float | None = None  # the strategy's score, kept for audit

    def __post_init__(self):
        if self.kind not in QUERY_KINDS:
            raise ValueError(f"unknown query kind {self.kind!r}")
        if self.kind in ("instance", "point", "box") and self.ann_id is None:
            raise ValueError(f"{self.kind} query needs ann_id")
        if self.kind == "point" and (self.x is None or self.y is None):
            raise ValueError("point query needs x and y")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Query":
        return cls(**d)


def image_query(image_id: int, score: float | None = None) -> Query:
    return Query("image", int(image_id), score=None if score is None else float(score))


def instance_query(image_id: int, ann_id: int, score: float | None = None) -> Query:
    return Query("instance", int(image_id), int(ann_id), score=None if score is None else float(score))


def point_query(image_id: int, ann_id: int, x: float, y: float, score: float | None = None) -> Query:
    return Query("point", int(image_id), int(ann_id), float(x), float(y), None if score is None else float(score))
