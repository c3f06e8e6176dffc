"""Training engine: the loop, distributed helpers, checkpoints, run directories."""
