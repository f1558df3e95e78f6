"""The engine: one run's step, loop, evaluation and checkpoints, below every command and above the parallel
pieces (sharding, collectives, optimizers, data sources, models)."""
