"""Which round is the best one, comparing like with like.

A round's score is the mean validation Dice of the training clients it evaluated. When a site
drops out, its round is evaluated on fewer sites, and means over different sets of sites are
not comparable. So a round is compared with the best round so far over the training clients
that have a validation score in **both** rounds: it becomes the best round if its mean over
those clients is higher. Each round row says which clients the comparison used
(``best_compared_on``); ``results.json`` states the rule (``best_round_rule``).
"""

from __future__ import annotations

import math
from typing import Any

BEST_MODEL = "best_model"
"""The folder of a run that holds the best round's checkpoint (see :mod:`fedfms.models.checkpoint`)."""

RULE = ("highest mean validation Dice of the training clients; each round is compared with the best round so far "
        "over the clients with a validation score in both rounds (best_compared_on in each round row)")


def validation_scores(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Validation Dice per training client in a round's ``eval`` rows (clients without
    validation images, or whose score is missing, left out)."""
    return {r["client"]: r["dice"] for r in rows
            if r["kind"] == "eval" and r["role"] == "train" and r["images"] > 0 and not math.isnan(r["dice"])}


def beats(scores: dict[str, float], best: dict[str, float] | None) -> tuple[bool, list[str]]:
    """Whether a round with validation ``scores`` replaces the best round so far (whose scores
    are ``best``; ``None``: there is none yet), and the clients the comparison used. Without
    any common client the newer round wins only if neither has a score (no validation data
    at all: the newest round is kept)."""
    if best is None:
        return True, sorted(scores)
    common = sorted(set(scores) & set(best))
    if not common:
        return not scores and not best, common
    return _mean(scores, common) > _mean(best, common), common


def _mean(scores: dict[str, float], clients: list[str]) -> float:
    return sum(scores[c] for c in clients) / len(clients)
