"""alseg: active learning and data selection for instance segmentation."""

__version__ = "0.1.0"
