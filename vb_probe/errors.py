"""User-facing errors: each message is one line naming the input, what was expected, and what to do."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from typing import NoReturn


class VbProbeError(Exception):
    """Anything a user can cause; the CLIs print it as one line and exit with code 2."""


class DataError(VbProbeError):
    """A data file (annotations, features, captions, parses) is malformed or inconsistent."""


class CheckpointError(VbProbeError):
    """A checkpoint folder is missing files, has the wrong model type, or its weights do not fit."""


def os_error_line(exc: OSError) -> str:
    """One line for a failed read or write, naming the file and what to do about this kind of failure (a full disk,
    a permission, a symbolic link loop, a vanished file)."""
    import errno

    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or type(exc).__name__
    hints = {errno.ENOSPC: "free space or choose another location, then run again (earlier results are untouched)",
             errno.EDQUOT: "free space or choose another location, then run again (earlier results are untouched)",
             errno.EACCES: "make it readable and writable for you, or choose another location",
             errno.EPERM: "make it readable and writable for you, or choose another location",
             errno.EROFS: "choose a writable location",
             errno.ELOOP: "a symbolic link there points back on itself; fix or remove the link",
             errno.ENOENT: "it vanished while the run used it; check the path and run again",
             errno.ENAMETOOLONG: "use a shorter path"}
    hint = hints.get(exc.errno, "check the file and the disk, then run again (earlier results are untouched)")
    return f"{where}: {reason}; {hint}"


class ProbeNote(UserWarning):
    """Something vb-probe decided on the user's behalf (a crop that skips phrases, a long sequence, a template not
    used): said when it is decided, printed by the CLIs as ``note: …``, shown by notebooks as a warning."""


def say(note: str) -> None:
    """Say ``note`` now (a :class:`ProbeNote`)."""
    import warnings

    warnings.warn(note, ProbeNote, stacklevel=2)


def _print_notes_as_lines(previous):
    """A ``warnings.showwarning`` that prints a :class:`ProbeNote` as one ``note: …`` line on standard output, from
    the first process only under torchrun (every process decides the same), and leaves other warnings to
    ``previous``."""
    import os

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, ProbeNote):
            return previous(message, category, filename, lineno, file, line)
        if os.environ.get("RANK", "0") == "0":
            print(f"note: {message}", flush=True)

    return show


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` runs: temporaries are removed, nothing is
    left half-written (the default action would end the process on the spot)."""


def _raise_terminated(signum, frame) -> NoReturn:
    raise Terminated()


def run_command(prog: str, args, handled: tuple[type[BaseException], ...] = (VbProbeError,)) -> int:
    """Run ``args.func(args)`` the way every CLI command runs: bad input → one line on stderr and exit 2
    (``args.debug`` re-raises for the traceback), Ctrl-C → 130 and SIGTERM → 143, each with a one-line hint
    (``--resume`` only for commands that have it)."""
    import warnings

    resumable = hasattr(args, "resume")
    again = "run again with --resume to continue" if resumable else "nothing half-written was left; run it again"
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    shown = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ProbeNote)
            warnings.showwarning = _print_notes_as_lines(shown)
            return args.func(args)
    except handled as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk or a vanished folder: say which file, leave no traceback
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {again}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated; {again}", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with each option's default, said once: not for required options, flags, options without one,
    or where the help text already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.required or default is None or default is False or default is argparse.SUPPRESS or default == []
                or "default" in text
                or isinstance(action, (argparse._StoreTrueAction, argparse._HelpAction, argparse._VersionAction))):
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong and where to look), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0 (learning rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a finite number above 0")
    return value


def at_least(lowest: int):
    """argparse type: a whole number of at least ``lowest``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{value} must be at least {lowest}")
        return value

    parse.__name__ = f"at_least_{lowest}"
    return parse


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (counts of steps, draws, heads, images)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value
