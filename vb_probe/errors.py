"""User-facing errors: each message is one line naming the input, what was expected, and what to do."""


class VbProbeError(Exception):
    """Anything a user can cause; the CLIs print it as one line and exit with code 2."""


class DataError(VbProbeError):
    """A data file (annotations, features, captions, parses) is malformed or inconsistent."""


class CheckpointError(VbProbeError):
    """A checkpoint folder is missing files, has the wrong model type, or its weights do not fit."""


def run_command(prog: str, args, handled: tuple[type[BaseException], ...] = (VbProbeError,)) -> int:
    """Run ``args.func(args)`` the way every CLI command runs: bad input → one line on stderr and exit 2
    (``args.debug`` re-raises for the traceback), Ctrl-C → 130 with a hint to resume."""
    import sys

    try:
        return args.func(args)
    except handled as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130
