"""The ServerApp: what runs beside the SuperLink. Flower calls ``main`` with the Grid through
which it reaches the hospitals' SuperNodes.

Run configuration (``[tool.flwr.app.config]`` in pyproject.toml, or ``flwr run --run-config``):

- ``config``: path of the run's YAML (see :mod:`fedfms.config`) on the server machine; in
  ``flwr run``'s local simulation (``--federation-config "num-supernodes=N"``, one virtual
  SuperNode per client folder under ``data.root``) ``data.clients`` may stay unset;
- ``run-dir``: where logs and checkpoints go (default: the YAML's ``output_dir``);
- ``resume``: ``true`` continues the run in ``run-dir`` from its last complete round (the
  errors of a ``flwr run`` say so, where ``fedfms train`` says ``--resume``).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedfms.config import RunConfig, load_config
from fedfms.federated.server import FederationError, run_federation
from fedfms.run.lock import run_lock
from fedfms.run.log import console_logging
from fedfms.run.tracker import RESUME_DEPLOYMENT
from fedfms.train.sites import ordered_clients

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run``: read the YAML named by the run config and run it."""
    console_logging()
    config = load_config(str(context.run_config["config"]))
    run_dir = Path(str(context.run_config.get("run-dir") or config.output_dir))
    if config.data.clients is None:
        if config.data.root is None:
            raise FederationError("a deployment needs data.clients: the names of the sites the server waits for")
        clients = [p.name for p in ordered_clients(config.data)]  # simulation: one node per client folder
        config = config.model_copy(update={"data": config.data.model_copy(update={"clients": clients})})
    with run_lock(run_dir):
        run_federation(grid, config, run_dir, expected_nodes=len(config.data.clients),
                       resume=bool(context.run_config.get("resume", False)), resume_hint=RESUME_DEPLOYMENT)


def server_app_for(config: RunConfig, run_dir: Path, expected_nodes: int, resume: bool, results: list) -> ServerApp:
    """A ServerApp bound to an in-memory configuration (used by ``fedfms train``); the run's
    ``results.json`` content is appended to ``results``."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        results.append(run_federation(grid, config, run_dir, expected_nodes, resume))

    return bound
