"""The one error type users see: a sentence naming the key, value and what was expected."""


class DisttrainError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""


class ConfigError(DisttrainError):
    """A config key, value or file is wrong."""


class PlanError(DisttrainError):
    """The requested sharding cannot be built for these tables and this world size."""


class DataError(DisttrainError):
    """A batch or data file does not match the model (e.g. ids out of a table's range)."""
