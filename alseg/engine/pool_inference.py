"""Pool inference for the loop; the code lives in ``alseg.predictions`` (below the engine, so that
strategies use it without importing the engine). Kept for existing imports."""

from alseg.predictions import PoolPredictions, infer_pool

__all__ = ["PoolPredictions", "infer_pool"]
