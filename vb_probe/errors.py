"""User-facing errors: each message is one line naming the input, what was expected, and what to do."""


class VbProbeError(Exception):
    """Anything a user can cause; the CLIs print it as one line and exit with code 2."""


class DataError(VbProbeError):
    """A data file (annotations, features, captions, parses) is malformed or inconsistent."""


class CheckpointError(VbProbeError):
    """A checkpoint folder is missing files, has the wrong model type, or its weights do not fit."""
