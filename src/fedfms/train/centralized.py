"""Centralized training (the paper's "SAM" and "MSA" rows): the same local trainer on the pooled
training splits of the same clients, with the same budget (one pass over the pooled data per
round, ``federation.rounds`` rounds) and the same evaluation, checkpoints and results."""

from __future__ import annotations

import time
from typing import Any

import torch

from fedfms.config import RunConfig
from fedfms.models import build_model, load_trainable_state, save_checkpoint, trainable_state
from fedfms.run.best import BEST_MODEL
from fedfms.run.lock import run_lock
from fedfms.run.tracker import RunTracker
from fedfms.train.device import resolve_device
from fedfms.train.planning import fingerprint_site, needs_plan, plan_from_fingerprints, with_plan
from fedfms.train.rounds import local_round
from fedfms.train.sites import Site, client_info, load_site, ordered_clients, save_run_split, score_site


def _eval_rows(model: torch.nn.Module, sites: list[Site], config: RunConfig, round_: int) -> list[dict[str, Any]]:
    rows = []
    for site in sites:
        scores = score_site(model, site, config)
        rows.append({"kind": "eval", "round": round_, "client": site.name,
                     "role": "unseen" if site.name == config.data.unseen else "train", **scores})
    return rows


def train_centralized(config: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Train on the pooled data of every client but the unseen one; returns ``results.json``.
    The run folder is held for the run's life (:mod:`fedfms.run.lock`)."""
    resolve_device(config.train.device, "train.device")
    ordered_clients(config.data)  # a missing client folder is refused before the run folder exists
    with run_lock(config.output_dir):
        return _train(config, resume)


def _train(config: RunConfig, resume: bool) -> dict[str, Any]:
    sites = [load_site(path, config) for path in ordered_clients(config.data)]
    trainers = [s for s in sites if s.name != config.data.unseen]
    if not trainers:
        raise ValueError(f"{config.name}: no training client (all clients are the unseen one)")
    if needs_plan(config):
        total = sum(len(s.train) for s in trainers)
        config = with_plan(config, plan_from_fingerprints(config.model, [fingerprint_site(s, config.model, total)
                                                                         for s in trainers]))
    tracker = RunTracker(config, config.output_dir, kind="centralized", resume=resume)
    save_run_split(config)
    model = build_model(config.model, seed=config.train.seed)
    if tracker.resumed is not None:
        load_trainable_state(model, tracker.resumed[0])
    trainer = trainers[0].name if len(trainers) == 1 else "pooled"  # one site: a Local row of the matrix
    for round_ in range(tracker.first_round, config.federation.rounds + 1):
        start = time.perf_counter()
        rows = [{"kind": "train", "round": round_, "client": trainer, "loss": result.loss, "samples": result.samples,
                 "seconds": result.seconds}
                for result in local_round(model, trainers, config, config.model, round_, trainer)]
        if round_ % config.federation.evaluate_every == 0 or round_ == config.federation.rounds:
            rows += _eval_rows(model, sites, config, round_)
        tracker.end_round(round_, {k: v.cpu() for k, v in trainable_state(model).items()}, {}, rows,
                          time.perf_counter() - start, [])

    load_trainable_state(model, tracker.best_trainable())
    final_rows = tracker.final_rows([s.name for s in sites], lambda missing: _eval_rows(
        model, [s for s in sites if s.name in missing], config, tracker.best_round or 0))
    save_checkpoint(config.output_dir / BEST_MODEL, model.cpu(), config.model, {"round": str(tracker.best_round),
                    "class_names": ",".join(sites[0].manifest.class_names)})
    return tracker.finish(final_rows, sites[0].manifest.class_names, {
        "trainable_parameters": sum(v.numel() for v in trainable_state(model).values()),
        "clients_info": {s.name: client_info(s.name, len(s.train), len(s.val), len(s.manifest.samples),
                                             config.data.unseen) for s in sites},
    })
