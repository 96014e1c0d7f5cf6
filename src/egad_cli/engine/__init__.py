"""The training engine: one loop, the distillation unit, checkpoints, runtime, normalisation."""
