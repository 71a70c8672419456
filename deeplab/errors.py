"""The package's error types, importable without torch."""


class CheckpointError(ValueError):
    """A checkpoint that cannot become a model; the message names the file and the reason."""


class EngineError(RuntimeError):
    """An engine that cannot run here (not installed, a precision the device lacks)."""
