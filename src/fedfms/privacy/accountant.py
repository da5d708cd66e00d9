"""A site's record-level privacy accountant: Opacus' RDP accountant, one per run and site, kept
on the site's own disk beside its kept optimizer state (``train.state_dir`` or the node's
``state-dir``), never sent. It only grows: a resumed run, or a site restarted mid-run, adds to
what the site already spent, since every round it trained released an update.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from opacus.accountants import RDPAccountant

from fedfms.config import RunConfig
from fedfms.io import atomic_write_text
from fedfms.train.optimizer import default_state_root


@dataclass(frozen=True)
class RoundCost:
    """One round of DP-SGD at a site: ``steps`` steps at ``sample_rate`` (cases) and
    ``noise_multiplier``."""

    noise_multiplier: float
    sample_rate: float
    steps: int


class SiteAccountant:
    """Epsilon spent by one site in one run; ``history`` is Opacus' (noise, rate, steps) list."""

    def __init__(self, path: Path, delta: float) -> None:
        self.path = path
        self.delta = delta
        self._accountant = RDPAccountant()
        if path.is_file():
            saved = json.loads(path.read_text())
            self._accountant.history = [tuple(entry) for entry in saved["history"]]
            self.rounds: list[int] = list(saved["rounds"])
        else:
            self.rounds = []

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return list(self._accountant.history)

    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta`` (0 before the first round)."""
        if not self._accountant.history:
            return 0.0
        return float(self._accountant.get_epsilon(self.delta))

    def epsilon_after(self, cost: RoundCost) -> float:
        """Epsilon this site would have spent after one more round of ``cost``."""
        projected = RDPAccountant()
        projected.history = [*self._accountant.history, (cost.noise_multiplier, cost.sample_rate, cost.steps)]
        return float(projected.get_epsilon(self.delta))

    def spend(self, cost: RoundCost, round_: int) -> float:
        """Record one round and write the accountant (temporary file, then rename); the new epsilon."""
        self._accountant.history.append((cost.noise_multiplier, cost.sample_rate, cost.steps))
        self.rounds.append(round_)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"delta": self.delta, "rounds": self.rounds,
                                                 "history": self._accountant.history}))
        return self.epsilon()


def site_accountant(config: RunConfig, client: str) -> SiteAccountant:
    """The accountant of ``client`` in the run ``config``, on the site's disk."""
    root = Path(config.train.state_dir or default_state_root()) / "privacy"
    key = hashlib.sha256(f"{config.name}\0{config.output_dir}\0{client}".encode()).hexdigest()[:32]
    return SiteAccountant(root / f"{key}.json", config.privacy.delta)
