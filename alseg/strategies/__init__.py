"""Selection strategies: one file per family, each built by Hydra from configs/strategy/<name>.yaml."""

from alseg.strategies.base import SelectionContext, Strategy

__all__ = ["SelectionContext", "Strategy"]
