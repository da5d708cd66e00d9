"""What a hospital accepts, set in its own node config (``flower-supernode --node-config``) and
enforced by its node: the coordinator's run configuration cannot switch it off.

Rules (all optional):

- ``require-secure-aggregation=true``: train only when the update leaves through SecAgg+ (the
  node checks that the message really came through the SecAgg+ protocol, not only that the run
  says so);
- ``require-privacy-level='record'`` (or ``'record,client'``): the run's ``privacy.level`` must be
  one of these;
- ``min-noise-multiplier=1.0``: the run's ``privacy.noise_multiplier`` must be at least this
  (and privacy on);
- ``max-epsilon=8``: with record-level DP, this site's own epsilon after the round must stay
  within it (the site computes it with its own accountant); with client-level DP, the run's
  ``privacy.target_epsilon`` must be set and within it.

A train message that breaks a rule is refused before anything is trained: the reply is an error
naming the site and the rule (:class:`PolicyRefusal`), the coordinator logs it and the run goes
on as with a site that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedfms.config import RunConfig
from fedfms.errors import FedfmsError
from fedfms.federated.protocol import SiteFailure

LEVELS = ("none", "record", "client")


class PolicyRefusal(SiteFailure):
    """A site's rule refused a message; names the site and the rule, nothing else."""


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, bool):
        return value
    raise FedfmsError(f"node config {key}={value!r}: expected true or false")


def _number(value: Any, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:
        raise FedfmsError(f"node config {key}={value!r}: expected a positive number")
    return number


def _levels(value: Any, key: str) -> set[str]:
    levels = {part.strip() for part in str(value).split(",") if part.strip()}
    if not levels or not levels <= set(LEVELS):
        raise FedfmsError(f"node config {key}={value!r}: expected one or more of {', '.join(LEVELS)}")
    return levels


RULES: dict[str, Callable[[Any, str], Any]] = {
    "require-secure-aggregation": _flag,
    "require-privacy-level": _levels,
    "min-noise-multiplier": _number,
    "max-epsilon": _number,
}
"""Node config key -> its parser (a wrong value is a configuration error of the node)."""


def site_rules(node_config: Mapping[str, Any]) -> dict[str, Any]:
    """The rules this node set, parsed."""
    return {key: parse(node_config[key], key) for key, parse in RULES.items() if key in node_config}


def broken_rule(rules: Mapping[str, Any], config: RunConfig, secure_aggregation: bool,
                epsilon_after: float | None) -> str | None:
    """The first rule the run breaks, as ``rule: why`` (``None``: the message may be trained).
    ``secure_aggregation``: whether this message came through SecAgg+; ``epsilon_after``: this
    site's record-level epsilon after the round (``None`` without record-level DP)."""
    privacy = config.privacy
    if rules.get("require-secure-aggregation") and not secure_aggregation:
        return "require-secure-aggregation: this update would leave without SecAgg+"
    if "require-privacy-level" in rules and privacy.level not in rules["require-privacy-level"]:
        return (f"require-privacy-level: the run's privacy.level is {privacy.level}, the site accepts "
                f"{', '.join(sorted(rules['require-privacy-level']))}")
    if "min-noise-multiplier" in rules and (privacy.level == "none"
                                             or privacy.noise_multiplier < rules["min-noise-multiplier"]):
        return (f"min-noise-multiplier: the run's noise multiplier is "
                f"{privacy.noise_multiplier if privacy.level != 'none' else 0:g} (privacy.level {privacy.level}), "
                f"the site requires at least {rules['min-noise-multiplier']:g}")
    if "max-epsilon" in rules:
        limit = rules["max-epsilon"]
        if privacy.level == "none":
            return f"max-epsilon: the run has no differential privacy, the site allows epsilon {limit:g} at most"
        if privacy.level == "record" and epsilon_after is not None and epsilon_after > limit:
            return f"max-epsilon: this round would bring the site's epsilon to {epsilon_after:.3g}, over {limit:g}"
        if privacy.level == "client" and (privacy.target_epsilon is None or privacy.target_epsilon > limit):
            return (f"max-epsilon: the run's privacy.target_epsilon is {privacy.target_epsilon}, the site allows "
                    f"{limit:g} at most")
    return None
