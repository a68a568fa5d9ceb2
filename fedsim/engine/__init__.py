"""The engine: configuration composed and validated, the run context, the round loop, the Flower
apps, runtimes, checkpoints."""
