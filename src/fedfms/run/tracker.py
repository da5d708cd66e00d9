"""Round bookkeeping shared by federated and centralized training: start or resume, log every
round (and to MLflow when tracking is on, see :mod:`fedfms.run.mlflow_tracking`), keep the best
round (see :mod:`fedfms.run.best`), checkpoint, and write ``results.json`` with the final scores
of the best round."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedfms.config import RunConfig, save_config
from fedfms.io import output_folder
from fedfms.run.best import RULE, beats, validation_scores
from fedfms.run.log import RunLog, console_line, read_rows, round_summary, write_json
from fedfms.run.mlflow_tracking import MlflowRun
from fedfms.run.state import (
    LATEST,
    ResumeError,
    RoundState,
    latest_kind,
    load_best,
    load_latest,
    save_round,
)

logger = logging.getLogger("fedfms")
RESULTS = "results.json"
RESUME_CLI = "run the same command with --resume"
RESUME_DEPLOYMENT = "submit it again with resume=true in flwr run's --run-config"


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the settings a resume may change (rounds, output folder, tracking)."""
    tree = {k: v for k, v in config.items() if k not in ("output_dir", "tracking")}
    tree["federation"] = {k: v for k, v in tree["federation"].items() if k != "rounds"}
    return tree


class RunTracker:
    """One run's progress on disk. ``first_round`` and ``resumed`` say where training starts.
    ``resume_hint`` says how this runtime continues a run (:data:`RESUME_CLI` for ``fedfms``
    commands, :data:`RESUME_DEPLOYMENT` for ``flwr run``)."""

    def __init__(self, config: RunConfig, run_dir: Path, kind: str, resume: bool = False,
                 resume_hint: str = RESUME_CLI) -> None:
        self.config = config
        self.resume_hint = resume_hint
        self.run_dir = output_folder(run_dir)
        self.kind = kind
        self.log = RunLog(run_dir)
        self.started = time.perf_counter()
        self.earlier_seconds = 0.0  # the rounds of earlier sessions of a resumed run
        self.best_round: int | None = None
        self.best_score: float | None = None
        self.best_scores: dict[str, float] | None = None
        self.first_round = 1
        self.resumed: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        earlier = latest_kind(run_dir)
        if earlier is not None and earlier != kind:
            raise ResumeError(f"{run_dir} holds a {earlier} run; this is a {kind} run, a different kind that cannot "
                              "continue it: choose another output folder")
        if resume:
            self._resume()
        elif (run_dir / "checkpoints" / LATEST).exists():
            raise ResumeError(f"{run_dir} already holds a run; to continue it, {resume_hint}; "
                              "or choose another output folder")
        else:
            self.log.truncate_after(0)  # rows of an attempt that died before its first checkpoint
        save_config(config, run_dir / "config.yaml")
        self.mlflow = MlflowRun(config, self.run_dir, kind, resume)

    def _resume(self) -> None:
        trainable, strategy, state = load_latest(self.run_dir)
        mine = _comparable(self.config.model_dump(mode="json"))
        if state.config and _comparable(state.config) != mine:
            raise ResumeError(f"{self.run_dir}: the configuration differs from the one the run was started "
                              "with (only federation.rounds may change on resume)")
        self.log.truncate_after(state.round)
        self.earlier_seconds = sum(r["seconds"] for r in read_rows(self.run_dir) if r["kind"] == "round")
        self.first_round = state.round + 1
        self.best_round, self.best_score, self.best_scores = state.best_round, state.best_score, state.best_scores
        self.resumed = (trainable, strategy)
        logger.info("resuming %s from round %d", self.run_dir, state.round)

    def end_round(self, round_: int, trainable: dict[str, torch.Tensor], strategy: dict[str, torch.Tensor],
                  rows: list[dict[str, Any]], seconds: float, failed: list[str],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Log the round's rows and its summary (with ``extra`` facts, e.g. ``epsilon``), update
        the best round, checkpoint."""
        summary = round_summary(round_, self.config.federation.rounds, rows)
        summary.update(seconds=seconds, failed=failed, **(extra or {}))
        score = summary["mean_val_dice"]
        is_best = False
        if any(r["kind"] == "eval" for r in rows):
            scores = validation_scores(rows)
            is_best, summary["best_compared_on"] = beats(scores, None if self.best_round is None else self.best_scores)
        if is_best:
            self.best_round, self.best_score, self.best_scores = round_, None if math.isnan(score) else score, scores
        self.log.append([*rows, summary])
        logger.info(console_line(summary, [r for r in rows if r["kind"] == "train"]))
        state = RoundState(round=round_, best_round=self.best_round, best_score=self.best_score,
                           best_scores=self.best_scores, config=self.config.model_dump(mode="json"), kind=self.kind)
        save_round(self.run_dir, trainable, strategy, state, is_best=is_best)
        self.mlflow.log_round(round_, [*rows, summary])
        return summary

    def best_trainable(self) -> dict[str, torch.Tensor]:
        """The global trainable tensors of the best round."""
        trainable, _ = load_best(self.run_dir)
        return trainable

    def final_rows(self, clients: list[str],
                   evaluate: Callable[[list[str]], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """The best round's ``eval`` row per client of ``clients``, in that order: the rows logged
        when the round was evaluated (the model is the same, so are the scores), and
        ``evaluate(missing)`` only for the clients the round lacks (a site that was down then, a
        run that never evaluated). A client with neither is left out."""
        logged = {r["client"]: r for r in read_rows(self.run_dir)
                  if r["kind"] == "eval" and r["round"] == self.best_round}
        missing = [c for c in clients if c not in logged]
        fresh = {r["client"]: r for r in evaluate(missing)} if missing else {}
        return [logged.get(c) or fresh[c] for c in clients if c in logged or c in fresh]

    def finish(self, final_rows: list[dict[str, Any]], class_names: list[str], extra: dict[str, Any]) -> dict[str, Any]:
        """Write ``results.json``: the best round's scores per client, and run facts."""
        results = {
            "class_names": class_names,
            "name": self.config.name,
            "kind": self.kind,
            "unseen": self.config.data.unseen,
            "best_round": self.best_round,
            "best_round_rule": RULE,
            "rounds": self.config.federation.rounds,
            "seconds": self.earlier_seconds + time.perf_counter() - self.started,
            "model": self.config.model.model_dump(mode="json"),
            "evaluation": self.config.evaluation.model_dump(mode="json"),
            "clients": {r["client"]: {k: r[k] for k in ("role", "split", "dice", "iou", "dice_per_class",
                                                         "iou_per_class", "images", "cases") if k in r}
                        for r in final_rows},
            **extra,
        }
        write_json(self.run_dir / RESULTS, results)
        self.mlflow.finish(class_names)
        return results
