"""Errors fex raises on bad input. Each carries a one-line message naming the problem.

Entry points (train.py, evaluate.py, fex-explain) catch :class:`FexError` and print
``error: <message>`` with exit code 2 instead of a traceback.
"""


class FexError(Exception):
    """Base class: a problem with the user's input, config, data or checkpoint."""


class InputError(FexError, ValueError):
    """Inputs of the wrong shape, dtype, channel count, or containing NaN/Inf."""


class TargetError(FexError, ValueError):
    """The black box returned something unusable (wrong shape, NaN, not probabilities)."""


class CheckpointError(FexError):
    """A checkpoint is missing, corrupt or not an fex explainer."""


class TargetMismatchError(CheckpointError):
    """The explainer was trained against a different target than the one supplied."""


class ConfigError(FexError, ValueError):
    """A config value or `_target_` that cannot be built."""


class DataError(FexError):
    """A dataset could not be read, or the masker cannot handle it."""


class OutputError(FexError, OSError):
    """An output directory or file cannot be written (read-only, no permission, disk full)."""
