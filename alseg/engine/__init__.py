"""Training, evaluation, pool inference and the active-learning round loop."""
