"""The metrics log of a run: one JSON line per event in ``metrics.jsonl``, a CSV of the scores
beside it, and one readable console line per round.

Rows (``kind``):

- ``train``: a client's local epoch — ``round, client, loss, samples, seconds, bytes_sent,
  bytes_received`` (bytes of parameters sent to / received from that client in the round);
- ``eval``: scores of the global model on one client — ``round, client, role`` (``train`` or
  ``unseen``), ``split`` (``val`` or ``test``), ``dice, iou, dice_per_class, iou_per_class,
  images`` (and ``cases`` with the ``case`` metric protocol);
- ``round``: ``round, seconds, mean_val_dice, unseen_dice, failed`` (clients that failed and why),
  and with differential privacy ``epsilon`` (the run's epsilon after the round, see
  :mod:`fedfms.privacy.budget`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedfms.errors import FedfmsError
from fedfms.io import atomic_write_text

logger = logging.getLogger("fedfms")


class RunLogError(FedfmsError, ValueError):
    """A run's metrics log is damaged somewhere else than its last line."""


METRICS = "metrics.jsonl"
SCORES_CSV = "scores.csv"
CSV_FIELDS = ("round", "client", "role", "split", "dice", "iou", "images")


def console_logging() -> None:
    """Show fedfms's INFO lines (one per round) on stderr; Flower's own console keeps warnings
    and errors only, since our round line already says who trained, failed and what travelled.
    Called by the CLI and by the ServerApp (whose stderr Flower forwards to ``flwr log``)."""
    fedfms = logging.getLogger("fedfms")
    if not fedfms.handlers:
        handler = _StderrNow()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
        fedfms.addHandler(handler)
    fedfms.setLevel(logging.INFO)
    fedfms.propagate = False
    flower = logging.getLogger("flwr")
    if not any(isinstance(f, _WarningsOnly) for f in flower.filters):
        flower.addFilter(_WarningsOnly())  # a filter, since Flower resets its level when imported


class _StderrNow(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is when a record comes, not as it was when
    the handler was made (a command run in-process, e.g. by the tests, may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


class _WarningsOnly(logging.Filter):
    """Flower's warnings and errors, minus two that normal runs always print: the deprecation of
    ``run_simulation`` (fedfms uses it on purpose, see :mod:`fedfms.federated.simulation`) and
    the shutdown of each simulation actor."""

    EXPECTED = ("`run_simulation` function is deprecated", "Manually terminating")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return record.levelno >= logging.WARNING and not any(text in message for text in self.EXPECTED)


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of ``run_dir/metrics.jsonl`` (empty if the run has not logged yet)."""
    path = run_dir / METRICS
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise RunLogError(f"{path}: line {number} is not JSON (the log is damaged)") from None
            logger.warning("%s: its last line is torn (a run killed while writing it); it is ignored", path)
    return rows


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (see :mod:`fedfms.io`)."""
    atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=True))


class RunLog:
    """Append-only metrics of one run; ``truncate_after`` drops rows of rounds not checkpointed."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, last_round: int) -> None:
        """Keep only rows of rounds <= ``last_round`` (used when resuming)."""
        rows = [r for r in read_rows(self.run_dir) if r.get("round", 0) <= last_round]
        atomic_write_text(self.run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv(rows)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to the JSON lines log and refresh the scores CSV."""
        with (self.run_dir / METRICS).open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        self._write_csv(read_rows(self.run_dir))

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(r for r in rows if r["kind"] == "eval")
        atomic_write_text(self.run_dir / SCORES_CSV, table.getvalue())


def round_summary(round_: int, total: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``round`` row of a round from its ``train`` and ``eval`` rows."""
    val = [r["dice"] for r in rows if r["kind"] == "eval" and r["role"] == "train" and r["images"] > 0]
    unseen = [r["dice"] for r in rows if r["kind"] == "eval" and r["role"] == "unseen"]
    return {
        "kind": "round",
        "round": round_,
        "rounds": total,
        "mean_val_dice": sum(val) / len(val) if val else math.nan,
        "unseen_dice": unseen[0] if unseen else math.nan,
    }


def console_line(summary: dict[str, Any], train_rows: list[dict[str, Any]]) -> str:
    """One line per round: loss, scores, time and traffic."""
    loss = [r["loss"] for r in train_rows]
    mean_loss = sum(loss) / len(loss) if loss else math.nan
    sent = sum(r.get("bytes_sent", 0) + r.get("bytes_received", 0) for r in train_rows) / 2**20
    failed = f" | failed: {', '.join(summary['failed'])}" if summary.get("failed") else ""
    scores = "".join(f" | {name} {summary[key]:.4f}" for name, key in (("val dice", "mean_val_dice"),
                                                                       ("unseen dice", "unseen_dice"))
                     if not math.isnan(summary[key]))
    epsilon = f" | epsilon {summary['epsilon']:.3g}" if summary.get("epsilon") is not None else ""
    return (f"round {summary['round']}/{summary['rounds']} | loss {mean_loss:.4f}{scores}{epsilon} | "
            f"{summary['seconds']:.1f} s | {sent:.2f} MiB exchanged{failed}")
