"""Dataset readers, the synthetic generator, transforms and the labeled/unlabeled pool."""
