"""disttrain: distributed training of recommendation models with sharded embedding tables."""

__version__ = "0.1.0"
