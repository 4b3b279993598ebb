"""A probe pass's progress file: what an interrupted run keeps so that ``--resume`` continues it, never counting a
batch twice, and only when every option that changes the counts is the same (its *fingerprint*).

One file a pass in ``--out``: ``.main.progress.json`` (also ``.select``, ``.control``), or under ``torchrun`` one a
process, ``.main.rank1.progress.json``, each with the counts of each of its batches (folded with the others' in
batch order at the end). A file of such a name that vb-probe did not write is never overwritten or deleted.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vb_probe.errors import VbProbeError
from vb_probe.metrics.grounding import HeadCounts

PASSES = ("main", "select", "control")  # one progress file each: .<pass>.progress.json in --out
SAVE_EVERY = 10  # batches between saves


def progress_path(out: Path, name: str) -> Path:
    return out / f".{name}.progress.json"


def rank_progress_path(path: Path, rank: int) -> Path:
    """Under torchrun, each process's own progress file (``.main.rank1.progress.json``): its batches only."""
    return path.with_name(path.name.replace(".progress", f".rank{rank}.progress"))


def is_progress_file(path: Path) -> bool:
    """A progress file of a probe pass (its keys), not a user's file of the same name."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(state, dict) and {"run", "done", "counts", "truncated"} <= set(state)


def progress_files(out: Path) -> list[Path]:
    """Every file in ``out`` named as a run's progress file: one process's (``.main.progress.json``) or one of several
    processes' (``.main.rank1.progress.json``)."""
    pattern = re.compile(r"\.(%s)(\.rank\d+)?\.progress\.json" % "|".join(PASSES))
    return sorted(p for p in out.glob(".*.progress.json") if pattern.fullmatch(p.name))


def check_progress_files(out: Path, resume: bool, processes: int = 1) -> None:
    """Before a probe runs: a file named like a progress file (of one process or of several under torchrun) that
    vb-probe did not write is never overwritten or deleted (with ``--resume`` a damaged one is reported when it is
    read); and ``--resume`` with another number of processes than the interrupted run had is refused, naming it
    (its progress would be ignored)."""
    found = progress_files(out)
    for path in found:
        if not (resume or is_progress_file(path)):
            raise VbProbeError(f"--out {out}: holds {path.name}, which is not vb-probe's progress file; move it "
                               "away or choose another --out (nothing was changed)")
    if not resume:
        return
    sharded = sorted({int(p.name.split(".rank")[1].split(".")[0]) for p in found if ".rank" in p.name})
    single = [p for p in found if ".rank" not in p.name]
    if processes == 1 and sharded and not single:
        raise VbProbeError(f"--out {out}: holds the progress of a run over {max(sharded) + 1} processes (torchrun); "
                           f"resume it with torchrun --nproc_per_node {max(sharded) + 1}, or run again without "
                           "--resume")
    if processes > 1 and single and not sharded:
        raise VbProbeError(f"--out {out}: holds the progress of a run in one process; resume it without torchrun, or "
                           "run again without --resume")


def remove_own_progress(out: Path, rank: int | None) -> None:
    """The progress files this run (this process, ``rank`` under torchrun) wrote, removed once its counts are in."""
    for name in PASSES:
        path = progress_path(out, name)
        path = rank_progress_path(path, rank) if rank is not None else path
        if is_progress_file(path):
            path.unlink()


@dataclass
class PassProgress:
    """What a pass has done: ``done`` batches, the ``counts`` per group, the ``late_skips`` found when batches were
    built (group → reason → count), the ``tallies`` kept beside the counts (key → :class:`~vb_probe.families.base.Tally`:
    the family's own measure, the per-query records), and for a process of several the counts and tallies of each
    of its batches (``deltas``: (batch number, state), folded in batch order at the end)."""

    done: int = 0
    counts: dict[str, HeadCounts] = field(default_factory=dict)
    late_skips: dict[str, Counter] = field(default_factory=dict)
    tallies: dict = field(default_factory=dict)
    deltas: list[tuple[int, dict]] = field(default_factory=list)

    def save(self, path: Path, run: dict, sharded: bool) -> None:
        """Atomically, with the ``run`` fingerprint it belongs to."""
        from vb_probe.atomic import write_json

        write_json(path, {"run": run, "done": self.done, "counts": {g: c.to_state() for g, c in self.counts.items()},
                          "truncated": {g: dict(c) for g, c in self.late_skips.items()},
                          "tallies": {key: tally.state() for key, tally in self.tallies.items()},
                          **({"deltas": self.deltas} if sharded else {})})

    @classmethod
    def load(cls, path: Path, run: dict, tallies: dict) -> PassProgress:
        """The progress saved by an interrupted pass of the same ``run`` (``tallies``: fresh ones, whose settings the
        saved states are restored into); one line when it is damaged or of another run."""
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            saved_run, done = state["run"], int(state["done"])
            counts = {g: HeadCounts.from_state(s) for g, s in state["counts"].items()}
            late_skips = {str(group): Counter({str(k): int(v) for k, v in reasons.items()})
                          for group, reasons in state["truncated"].items()}
            restored = {key: tally.restored(state["tallies"][key]) for key, tally in tallies.items()}
            deltas = [(int(number), {"counts": {str(g): dict(sub) for g, sub in batch["counts"].items()},
                                     "tallies": dict(batch["tallies"])})
                      for number, batch in state.get("deltas", [])]
            for _, batch in deltas:  # readable now, not when the shards are folded
                for sub in batch["counts"].values():
                    HeadCounts.from_state(sub)
                for key, tally in tallies.items():
                    tally.restored(batch["tallies"][key])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, RecursionError) as exc:
            raise VbProbeError(f"{path}: the saved progress is damaged ({type(exc).__name__}); run again without "
                               "--resume to start over") from None
        differs = sorted(k for k in set(run) | set(saved_run) if run.get(k) != saved_run.get(k))
        if differs:
            shown = ", ".join(f"{k} {saved_run.get(k)!r} → {run.get(k)!r}" for k in differs[:3])
            raise VbProbeError(f"{path}: saved progress is for another run ({shown}); resume with the same options, "
                               "or run again without --resume")
        return cls(done, counts, late_skips, restored, deltas)


def fold(shards: list[tuple[list[tuple[int, dict]], dict]], tallies: dict) -> PassProgress:
    """Every process's per-batch counts (and tallies) folded in batch order, as one process adds them, the late skips
    summed; then each tally's :meth:`~vb_probe.families.base.Tally.finish` (the localization prompts cut to the first
    ones in batch order). ``tallies``: fresh ones, merged into."""
    total = PassProgress(tallies=tallies)
    for _, state in sorted(((number, state) for deltas, _ in shards for number, state in deltas), key=lambda x: x[0]):
        for group, sub in state["counts"].items():
            delta = HeadCounts.from_state(sub)
            total.counts.setdefault(group, HeadCounts(delta.layers, delta.heads)).merge(delta)
        for key, tally in tallies.items():
            tally.merge(tally.restored(state["tallies"][key]))
    for tally in tallies.values():
        tally.finish()
    for _, skips in shards:
        for group, reasons in skips.items():
            total.late_skips.setdefault(group, Counter()).update(reasons)
    return total


__all__ = ["PASSES", "SAVE_EVERY", "PassProgress", "check_progress_files", "fold", "is_progress_file",
           "progress_files", "progress_path", "rank_progress_path", "remove_own_progress"]
