"""Train / validation / test splits: by case, per client, leave-one-client-out.

Rule of :func:`train_val_split` (each client computes it locally from its own manifest):
cases (volumes, patients) are shuffled with a generator seeded by ``(seed, client name)``;
the first ``n_val = round(n_cases * val_fraction)`` cases are validation, with at least one
validation case when the client has two or more cases and ``val_fraction > 0``, and at least one
training case always. A client with a single case trains on all of it (with a warning): no
case is ever split between train and validation. The 9:1 ratio is therefore over cases; the
sample ratio follows it up to the cases' sizes.

``val_count`` names how many cases validate (``n`` cases, fraction ``f``): ``round`` (the rule
above), or the reference code's: ``floor_plus_one`` (``int(n f) + 1``: its volume datasets,
``n // 10 + 1``) and ``floor`` (``int(n f)``: its fundus images, one case per image), each
kept between 0 and ``n - 1`` so that a client always trains.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from fedfms.data.manifest import ClientManifest
from fedfms.data.writer import atomic_write_text


def _rng(seed: int, client: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}:{client}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


VAL_COUNTS = ("round", "floor_plus_one", "floor")


def validation_cases(n_cases: int, val_fraction: float, rule: str = "round") -> int:
    """How many of ``n_cases`` cases validate under ``rule`` (see the module docstring)."""
    if rule not in VAL_COUNTS:
        raise ValueError(f"unknown val_count {rule!r}; choose one of {VAL_COUNTS}")
    if n_cases < 2 or val_fraction == 0:
        return 0
    count = {"round": max(1, round(n_cases * val_fraction)), "floor_plus_one": int(n_cases * val_fraction) + 1,
             "floor": int(n_cases * val_fraction)}[rule]
    return min(count, n_cases - 1)


def train_val_split(manifest: ClientManifest, val_fraction: float = 0.1, seed: int = 0,
                    val_count: str = "round") -> tuple[list[int], list[int]]:
    """Sample indices ``(train, val)`` of one client, split by ``case_id`` (see the module rule)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    cases = sorted(manifest.case_ids)
    if len(cases) == 1 and val_fraction > 0:
        warnings.warn(f"client {manifest.client!r} has a single case: all of it is training, none validation", stacklevel=2)
    n_val = validation_cases(len(cases), val_fraction, val_count)
    _rng(seed, manifest.client).shuffle(cases)
    val_cases = set(cases[:n_val])
    train = [i for i, s in enumerate(manifest.samples) if s.case_id not in val_cases]
    val = [i for i, s in enumerate(manifest.samples) if s.case_id in val_cases]
    return train, val


@dataclass
class FoldSplit:
    """One leave-one-client-out fold: sample ids per client."""

    unseen: str
    train: dict[str, list[str]]
    val: dict[str, list[str]]
    test: list[str]


def check_same_classes(manifests: Mapping[str, ClientManifest]) -> list[str]:
    """The class names all clients share; a client with another label set is an error naming it."""
    names = {tuple(m.class_names) for m in manifests.values()}
    if len(names) > 1:
        listing = "; ".join(f"{c}: {m.class_names}" for c, m in manifests.items())
        raise ValueError(f"clients have different class names ({listing}); prepare them with the same classes")
    return list(next(iter(names), ()))


def leave_one_client_out(
    manifests: Mapping[str, ClientManifest], unseen: str, val_fraction: float = 0.1, seed: int = 0,
    val_count: str = "round",
) -> FoldSplit:
    """``unseen``'s whole data is test; every other client splits by case into train/val."""
    if unseen not in manifests:
        raise ValueError(f"unseen client {unseen!r} is not one of {sorted(manifests)}")
    check_same_classes(manifests)
    train: dict[str, list[str]] = {}
    val: dict[str, list[str]] = {}
    for name in sorted(manifests):
        if name == unseen:
            continue
        manifest = manifests[name]
        tr, va = train_val_split(manifest, val_fraction, seed, val_count)
        train[name] = [manifest.samples[i].id for i in tr]
        val[name] = [manifest.samples[i].id for i in va]
    return FoldSplit(unseen, train, val, [s.id for s in manifests[unseen].samples])


def save_split(split: FoldSplit, path: Path) -> None:
    """Write the split as JSON, atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(split), indent=1))


def load_split(path: Path) -> FoldSplit:
    """Read a split written by :func:`save_split`; a clear error names a missing/corrupt file."""
    try:
        data = json.loads(Path(path).read_text())
        return FoldSplit(unseen=data["unseen"], train=data["train"], val=data["val"], test=data["test"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable split file ({err})") from None
