"""The run's privacy on the server: the DP strategy of client-level runs, the epsilon spent so
far, and the budget (``privacy.target_epsilon``) checked before every round.

- ``record``: each site accounts its own epsilon (:mod:`fedfms.privacy.accountant`) and reports
  it with every query and train reply, with the epsilon it would have after one more round. The
  run's epsilon is the largest over the sites; a round is not started if a site's next epsilon
  would exceed the budget.
- ``client``: Flower's :class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`
  wraps FedAvg (sites weighted equally, as its accounting assumes) and composes each release in
  Flower's :class:`~flwr.serverapp.RdpAccountant` (no amplification: every training site takes
  part in every round). Its state is written to ``privacy.json`` in the run folder as soon as a
  round's noised aggregate exists (before it is sent anywhere), so a resumed run never counts
  less than was released.

A run that the budget stops ends as usual (the best round scored, exit status 0), with
``stopped_by_budget: true`` in ``results.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flwr.serverapp import RdpAccountant
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)

from fedfms.config import RunConfig
from fedfms.errors import FedfmsError
from fedfms.io import atomic_write_text

logger = logging.getLogger("fedfms")
STATE = "privacy.json"


class BudgetError(FedfmsError, RuntimeError):
    """The budget allows not even one round."""


class RunPrivacy:
    """The privacy of one federated run, server side: epsilon so far, the budget check, and
    (client level) the DP strategy. ``epsilons`` are the sites' last reported record-level ones."""

    def __init__(self, config: RunConfig, run_dir: Path, resume: bool) -> None:
        self.privacy = config.privacy
        self.path = run_dir / STATE
        self.accountant: RdpAccountant | None = None
        self.epsilons: dict[str, float] = {}
        self.next_epsilons: dict[str, float] = {}
        self.stopped_by_budget = False
        saved = json.loads(self.path.read_text()) if resume and self.path.is_file() else {}
        self.epsilons = dict(saved.get("site_epsilons", {}))
        self._saved_accountant = saved.get("accountant")

    @property
    def level(self) -> str:
        return self.privacy.level

    def wrap(self, strategy: FedAvg, trainers: int) -> Strategy:
        """The round's strategy: ``strategy`` itself, or for client-level DP Flower's server-side
        fixed clipping around FedAvg with equal site weights and its RDP accountant."""
        if self.level != "client":
            return strategy
        self.accountant = RdpAccountant(PrivacyConfig(
            target_delta=self.privacy.delta, population_size=trainers,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=self.privacy.target_epsilon))
        if self._saved_accountant is not None:
            self.accountant.load_state_dict(self._saved_accountant)
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=self.privacy.noise_multiplier, clipping_norm=self.privacy.max_grad_norm,
            num_sampled_clients=trainers, accountant=self.accountant)

    def epsilon(self) -> float | None:
        """The run's epsilon so far (``None`` without DP)."""
        if self.level == "client":
            return self.accountant.get_epsilon(self.privacy.delta) if self.accountant.num_releases else 0.0
        if self.level == "record":
            return max(self.epsilons.values(), default=0.0)
        return None

    def heard(self, client: str, reply: dict[str, Any]) -> None:
        """Note a site's record-level epsilons from its query or train reply."""
        if "epsilon" in reply:
            self.epsilons[client] = float(reply["epsilon"])
            self.next_epsilons[client] = float(reply["epsilon-next"])

    def next_round_allowed(self, trainers: list[str], round_: int) -> bool:
        """Whether round ``round_`` fits the budget; if not, say so once and remember it."""
        target = self.privacy.target_epsilon
        if target is None or self.level == "none":
            return True
        if self.level == "record":
            over = {c: e for c, e in self.next_epsilons.items() if c in trainers and e > target}
            projected = max(over.values(), default=0.0)
            reason = ", ".join(f"{c} would reach epsilon {e:.3g}" for c, e in sorted(over.items()))
        else:
            event = GaussianPrivacyEvent(noise_multiplier=self.privacy.noise_multiplier,
                                         sample_size=self.accountant.config.population_size,
                                         population_size=self.accountant.config.population_size)
            over = self.accountant.would_exceed(event)
            projected = self._projected(event) if over else 0.0
            reason = f"the run would reach epsilon {projected:.3g}"
        if not over:
            return True
        if round_ == 1:
            raise BudgetError(f"privacy.target_epsilon {target:g} allows no round: after round 1 {reason} "
                              f"(delta {self.privacy.delta:g}); raise the budget or the noise multiplier")
        logger.warning("privacy budget: stopped before round %d, which would exceed privacy.target_epsilon %g "
                       "(%s); the run ends with round %d", round_, target, reason, round_ - 1)
        self.stopped_by_budget = True
        return False

    def _projected(self, event: GaussianPrivacyEvent) -> float:
        projected = RdpAccountant(self.accountant.config)
        projected.load_state_dict(self.accountant.state_dict())
        projected.compose(event)
        return projected.get_epsilon(self.privacy.delta)

    def save(self) -> None:
        """Write what was spent (temporary file, then rename)."""
        if self.level == "none":
            return
        state = {"level": self.level, "delta": self.privacy.delta, "epsilon": self.epsilon(),
                 "site_epsilons": self.epsilons,
                 "accountant": self.accountant.state_dict() if self.accountant is not None else None}
        atomic_write_text(self.path, json.dumps(state, indent=2))

    def summary(self) -> dict[str, Any]:
        """``results.json``'s ``privacy`` entry."""
        private = self.level != "none"
        return {"level": self.level, "epsilon": self.epsilon(), "delta": self.privacy.delta if private else None,
                "target_epsilon": self.privacy.target_epsilon if private else None,
                "noise_multiplier": self.privacy.noise_multiplier if private else None,
                "stopped_by_budget": self.stopped_by_budget}

