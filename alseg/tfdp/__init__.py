"""TFDP: training-free dataset pruning for instance segmentation by mask shape complexity.

See ``alseg.tfdp.scoring`` for the method and the choices the paper leaves open, and
``alseg-prune --help`` (``alseg.tfdp.cli``) for the command line.
"""

from alseg.tfdp.scoring import (
    CONTOURS,
    DEFAULT_VARIANT,
    STATUS_NAMES,
    VARIANTS,
    ScoreResult,
    ShapeStats,
    cache_path,
    compute_scores,
    default_cache_dir,
    file_sha1,
    instance_shape_stats,
    kept_count,
    prune_coco,
    prune_raw,
    rank_images,
    score_dataset,
    score_file,
    score_loaded,
    score_raw,
    select_top,
)

__all__ = [
    "CONTOURS",
    "DEFAULT_VARIANT",
    "STATUS_NAMES",
    "VARIANTS",
    "ScoreResult",
    "ShapeStats",
    "cache_path",
    "compute_scores",
    "default_cache_dir",
    "file_sha1",
    "instance_shape_stats",
    "kept_count",
    "prune_coco",
    "prune_raw",
    "rank_images",
    "score_dataset",
    "score_file",
    "score_loaded",
    "score_raw",
    "select_top",
]
