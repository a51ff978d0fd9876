"""Training: optimiser and schedule, device mesh and sharding, metrics, the training loop."""
