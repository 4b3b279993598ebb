"""Figures in a notebook: a result's ``plot()`` builds a matplotlib ``Figure`` without pyplot (no global state, no
figure left open in a script), and such a figure shows in Jupyter only as a cell's last expression, so
``fig = result.plot()`` showed nothing. :func:`present` shows it at once when a notebook kernel runs the code, and
marks it so that, returned as the cell's last expression too, it is not drawn a second time."""

from __future__ import annotations

SHOWN = "_vb_probe_shown"  # the attribute that marks a figure already displayed
_installed: set[str] = set()


def present(fig):
    """``fig``, displayed now when running in a notebook kernel (nothing changes elsewhere). Returns ``fig``."""
    shell = _kernel_shell()
    if shell is None:
        return fig
    _install(shell)
    import io

    from IPython.display import Image, display

    buffer = io.BytesIO()  # drawn here: a kernel that never imported pyplot has no figure formatter of its own
    fig.savefig(buffer, format="png", dpi=fig.dpi, bbox_inches="tight")
    display(Image(data=buffer.getvalue(), format="png"))
    setattr(fig, SHOWN, True)
    return fig


def _kernel_shell():
    """The IPython shell of a notebook kernel, or None (a script, a terminal IPython, no IPython)."""
    import sys

    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    shell = get_ipython()
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def _install(shell) -> None:
    """Wrap the kernel's image formatters of matplotlib figures: a figure marked shown is not drawn again."""
    from matplotlib.figure import Figure

    for mime, formatter in shell.display_formatter.formatters.items():
        if mime in _installed or not mime.startswith("image/") and mime != "application/pdf":
            continue
        previous = formatter.lookup_by_type(Figure) if Figure in formatter.type_printers else None
        if previous is None:
            continue

        def printer(fig, previous=previous):
            return None if getattr(fig, SHOWN, False) else previous(fig)

        formatter.for_type(Figure, printer)
        _installed.add(mime)
