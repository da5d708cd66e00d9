"""The resumable state of a run: after every round, the global trainable tensors, the strategy's
own tensors (e.g. FedAdam's moments), the round number and the best round so far.

Layout under ``RUN_DIR/checkpoints/``::

    round-0007/  trainable.safetensors  strategy.safetensors  state.json
    best/        the same files, for the best round (see :mod:`fedfms.run.best`)
    LATEST       name of the newest complete round folder

Each folder is written under a temporary name and renamed into place; ``LATEST`` is replaced
atomically after that, so an interrupted write never leaves a checkpoint that resume would take.
``state.json`` also holds the SHA-256 of both tensor files (``"sha256"``); a file that no
longer matches it (damaged on disk) makes its folder unreadable, and a resume falls back to the
best round, naming the damaged file.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedfms.errors import FedfmsError
from fedfms.io import atomic_write_text, describe, sha256_of

TRAINABLE = "trainable.safetensors"
STRATEGY = "strategy.safetensors"
STATE = "state.json"
DIGESTS = "sha256"
logger = logging.getLogger("fedfms")
LATEST = "LATEST"


@dataclass
class RoundState:
    """What a run needs to continue after ``round``: scalars here, tensors beside them."""

    round: int
    best_round: int | None = None
    best_score: float | None = None
    best_scores: dict[str, float] | None = None  # validation Dice per client of the best round
    config: dict = field(default_factory=dict)
    kind: str | None = None  # federated or centralized (None: written before it was recorded)


class ResumeError(FedfmsError, RuntimeError):
    """The run folder holds no usable checkpoint, or one made with another configuration."""


class CheckpointWriteError(FedfmsError, OSError):
    """A round's checkpoint could not be written (full disk, read-only folder); the previous
    complete round stays the one a resume starts from."""


def _write_folder(target: Path, trainable: dict[str, torch.Tensor], strategy: dict[str, torch.Tensor],
                  state: RoundState) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    except OSError as err:
        raise CheckpointWriteError(f"round {state.round}: {describe(err)}; the last complete round on disk is "
                                   "unchanged") from None
    try:
        save_file({k: v.contiguous() for k, v in trainable.items()}, tmp / TRAINABLE)
        save_file({k: v.contiguous() for k, v in strategy.items()}, tmp / STRATEGY)
        digests = {name: sha256_of(tmp / name) for name in (TRAINABLE, STRATEGY)}
        (tmp / STATE).write_text(json.dumps(asdict(state) | {DIGESTS: digests}, indent=2))
        if target.exists():
            old = target.with_name(f".{target.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = describe(err) if isinstance(err, OSError) else f"{target}: {err}"
        raise CheckpointWriteError(f"round {state.round}: {reason}; the last complete round on disk is "
                                   "unchanged") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_round(run_dir: Path, trainable: dict[str, torch.Tensor], strategy: dict[str, torch.Tensor],
               state: RoundState, is_best: bool) -> None:
    """Persist the state after ``state.round``; keep only this round and the best one."""
    root = run_dir / "checkpoints"
    name = f"round-{state.round:04d}"
    _write_folder(root / name, trainable, strategy, state)
    if is_best:
        _write_folder(root / "best", trainable, strategy, state)
    previous = (root / LATEST).read_text().strip() if (root / LATEST).exists() else None
    atomic_write_text(root / LATEST, name)
    if previous and previous != name:
        shutil.rmtree(root / previous, ignore_errors=True)


def _read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], RoundState]:
    try:
        described = json.loads((folder / STATE).read_text())
        digests = described.pop(DIGESTS, {})  # none in the folders of earlier versions
        state = RoundState(**described)
        for name, digest in digests.items():
            if sha256_of(folder / name) != digest:
                raise ResumeError(f"{folder / name}: checkpoint is damaged: its SHA-256 differs from the one "
                                  f"stored in {STATE} when it was written")
        return load_file(folder / TRAINABLE), load_file(folder / STRATEGY), state
    except (OSError, ValueError, TypeError, AttributeError, SafetensorError) as err:
        raise ResumeError(f"{folder}: checkpoint is unreadable: {err}") from None


def _best_folder(root: Path) -> Path:
    """``best/``, or the previous best left by a kill between the two renames of its swap."""
    best = root / "best"
    return best if best.exists() or not (root / ".best-old").exists() else root / ".best-old"


def load_latest(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], RoundState]:
    """The newest complete round of ``run_dir`` (trainable, strategy tensors, state). If its
    folder is unreadable (a damaged disk, a file edited by hand), the run falls back to the best
    round's folder, which is complete too, and says which rounds it discards."""
    root = run_dir / "checkpoints"
    pointer = root / LATEST
    if not pointer.exists():
        raise ResumeError(f"{run_dir}: no complete round to resume from (missing {pointer})")
    latest = root / pointer.read_text().strip()
    try:
        return _read_folder(latest)
    except ResumeError as damaged:
        try:
            fallback = _read_folder(_best_folder(root))
        except ResumeError:
            raise damaged from None
        logger.warning("%s; resuming from the best round, %d, instead: the rounds after it are discarded",
                       damaged, fallback[2].round)
        return fallback


def latest_kind(run_dir: Path) -> str | None:
    """Whether the newest complete round of ``run_dir`` belongs to a ``federated`` or a
    ``centralized`` run (``None``: no round, or one that did not record it)."""
    root = run_dir / "checkpoints"
    try:
        return json.loads((root / (root / LATEST).read_text().strip() / STATE).read_text()).get("kind")
    except (OSError, ValueError):
        return None


def load_best(run_dir: Path) -> tuple[dict[str, torch.Tensor], RoundState]:
    """The trainable tensors and state of the best round (by mean validation Dice)."""
    trainable, _, state = _read_folder(_best_folder(run_dir / "checkpoints"))
    return trainable, state
