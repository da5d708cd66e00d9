"""A federated run on one machine with Flower's simulation runtime (Ray): one virtual SuperNode
per client folder, the same ClientApp and server loop as a real deployment."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from flwr.simulation import run_simulation

from fedfms.config import RunConfig
from fedfms.federated.client_app import app as client_app
from fedfms.federated.interrupt import stop_cleanly
from fedfms.federated.reaper import reaped
from fedfms.federated.server_app import server_app_for
from fedfms.models import build_model
from fedfms.run.lock import run_lock
from fedfms.train.device import resolve_device
from fedfms.train.planning import needs_plan
from fedfms.train.sites import (
    check_site_files,
    load_site,
    ordered_clients,
    save_run_split,
)

logger = logging.getLogger("fedfms")


def preflight(config: RunConfig) -> None:
    """What can be checked before the engine starts, so that a wrong setting or a broken folder
    is one clear error in seconds instead of a client failure after Ray's start-up: every client
    folder (manifest, classes against the model, sample files) and the model itself (input size,
    pretrained weights file: built once here) and the device (the virtual sites run here)."""
    resolve_device(config.train.device, "train.device")
    for directory in ordered_clients(config.data):
        check_site_files(load_site(directory, config))
    if not needs_plan(config):  # an nnU-Net is planned from the sites' fingerprints first
        build_model(config.model, seed=config.train.seed)


def simulate(config: RunConfig, resume: bool = False) -> dict[str, Any]:
    """Run ``config`` in the simulation runtime; returns the run's results (also in results.json).

    Node *i* serves the *i*-th client of ``data.clients`` (default: all folders under
    ``data.root``, sorted). Each virtual client gets ``simulation.cpus_per_client`` CPUs (default:
    all, so clients train one after another and each uses every core). The run folder is held
    for the run's life (:mod:`fedfms.run.lock`).
    """
    ordered_clients(config.data)  # a wrong client name fails before any folder is made
    preflight(config)
    with run_lock(config.output_dir):
        return _simulate(config, resume)


def _simulate(config: RunConfig, resume: bool) -> dict[str, Any]:
    clients = [p.name for p in ordered_clients(config.data)]
    config = config.model_copy(update={"data": config.data.model_copy(update={"clients": clients})})
    cores = os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": config.simulation.cpus_per_client or cores,
                             "num_gpus": config.simulation.gpus_per_client},
        "init_args": {"num_cpus": cores, "include_dashboard": False},
    }
    save_run_split(config)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    results: list[dict[str, Any]] = []
    server_app = server_app_for(config, config.output_dir, len(clients), resume, results)
    logger.info("%s: starting Flower's simulation runtime, %d virtual SuperNodes (%s); the first round "
                "line follows round 1", config.name, len(clients), ", ".join(clients))
    with warnings.catch_warnings(), reaped(), stop_cleanly(config.output_dir):
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(clients),
                       backend_config=backend)
    if not results:
        raise RuntimeError(f"the simulation of {config.name} ended without results; see the log above")
    return results[0]
