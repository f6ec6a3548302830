"""Metrics of each round, emitted once and written by several writers (detectron2 style)."""

from alseg.writers.base import MetricsWriter, WriterGroup

__all__ = ["MetricsWriter", "WriterGroup"]
