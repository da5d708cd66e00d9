"""A run's progress in MLflow, logged by the coordinator through MLflow's client (sites need
nothing), when ``tracking.mlflow_uri`` is set.

One MLflow run per training run (federated or centralized), in the experiment
``tracking.experiment``; a plain folder as ``mlflow_uri`` holds an SQLite store ``mlflow.db``
(MLflow 3 no longer creates folder stores):

* parameters: the whole configuration, flattened (``federation.rounds``, ``model.mode``...);
* tags: ``dataset`` (the data root's folder name), ``backbone`` (the architecture for the
  baselines), ``mode``, ``unseen``, ``kind``, ``run_dir`` and ``rounds`` (MLflow parameters
  cannot change, so a resume with more rounds keeps ``federation.rounds`` as started and
  updates this tag);
* metrics, ``step`` = round: every number of every row of ``metrics.jsonl`` (see
  :mod:`fedfms.run.log`) as ``<kind>/<client>/<key>``, e.g. ``train/BIDMC/loss``,
  ``train/BIDMC/bytes_sent``, ``eval/UCL/dice``, ``eval/UCL/dice_per_class/2`` (class 2 of C),
  ``round/mean_val_dice``, ``round/seconds``; a key another part adds to a row (``epsilon``
  when differential privacy is on) is logged the same way;
* artifacts at the end: ``results.json``, ``config.yaml``, ``metrics.jsonl``, ``scores.csv``,
  ``plots/dice_per_round.png`` and the ``best_model`` checkpoint folder; reports written later
  by ``fedfms demo`` / ``fedfms report`` join their runs (:func:`attach_artifacts`).

``--resume`` continues the same MLflow run: its id is kept in the run folder
(``mlflow_run.json``). A tracking store that fails (a server down, a full disk) never stops
training: one warning, MLflow logging stops for the rest of this session, and the run's own
logs stay complete. Requests to a server are retried twice and time out after 10 s unless
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` say otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fedfms.config import RunConfig
from fedfms.run.best import BEST_MODEL

logger = logging.getLogger("fedfms")
RUN_ID_FILE = "mlflow_run.json"
ARTIFACTS = ("results.json", "config.yaml", "metrics.jsonl", "scores.csv")
#: MLflow's default waits minutes on a server that is down (7 retries, exponential backoff).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_PARAM_LENGTH = 6000


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``{"a": {"b": 1}}`` -> ``("a.b", "1")``; lists and ``None`` as their JSON text."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", json.dumps(value) if not isinstance(value, str) else value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of one ``metrics.jsonl`` row as MLflow metrics (see the module docstring);
    per-class lists give one metric per class (1-based); the round number is the step."""
    prefix = row["kind"] if "client" not in row else f"{row['kind']}/{row['client']}"
    metrics = {}
    for key, value in row.items():
        if key == "round":
            continue
        if _number(value):
            metrics[f"{prefix}/{key}"] = float(value)
        elif key.endswith("_per_class") and isinstance(value, list):
            metrics.update({f"{prefix}/{key}/{c + 1}": float(v) for c, v in enumerate(value) if _number(v)})
    return metrics


def store_uri(uri: str) -> str:
    """The tracking URI MLflow is given: a plain folder becomes an SQLite store ``mlflow.db`` in
    it (MLflow 3 refuses new folder stores), any other URI is kept."""
    if "://" in uri:
        return uri
    folder = Path(uri).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment of an SQLite store keeps its artifacts: ``mlartifacts/<experiment>``
    beside the database (MLflow's default, ``./mlruns``, is the working directory of whoever
    runs); a server decides for itself (``None``)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts" / experiment).as_uri()


def run_tags(config: RunConfig, kind: str, run_dir: Path) -> dict[str, str]:
    model = config.model
    return {
        "dataset": config.data.root.name if config.data.root is not None else "deployment",
        "backbone": model.backbone if model.arch == "sam" else model.arch,
        "mode": model.mode if model.arch == "sam" else "full",
        "unseen": config.data.unseen or "none",
        "kind": kind,
        "run_dir": str(run_dir),
    }


class MlflowRun:
    """The MLflow run of one training run; every method is a no-op once tracking is off."""

    def __init__(self, config: RunConfig, run_dir: Path, kind: str, resume: bool) -> None:
        self.uri = config.tracking.mlflow_uri
        self.run_dir = run_dir
        self.client: Any = None
        self.run_id: str | None = None
        if self.uri is not None:
            self._guard("start", lambda: self._start(config, kind, resume))

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _guard(self, what: str, action: Any) -> None:
        try:
            action()
        except Exception as err:  # noqa: BLE001 - any store failure (HTTP, SQL, disk) must not stop training
            logger.warning("MLflow tracking at %s failed (%s: %s: %s); training goes on without it, the run's own "
                           "logs in %s stay complete", self.uri, what, type(err).__name__, str(err).splitlines()[0]
                           if str(err) else "", self.run_dir)
            self.run_id = None

    def _start(self, config: RunConfig, kind: str, resume: bool) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.uri = store_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        stored = self.run_dir / RUN_ID_FILE
        previous = json.loads(stored.read_text()) if resume and stored.exists() else None
        if previous is not None and previous.get("tracking_uri") == self.uri:
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "rounds", str(config.federation.rounds))
            logger.info("MLflow: continuing run %s at %s", self.run_id, self.uri)
            return
        experiment = self.client.get_experiment_by_name(config.tracking.experiment)
        name = config.tracking.experiment
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(name, artifact_location(self.uri, name)))
        tags = run_tags(config, kind, self.run_dir) | {"rounds": str(config.federation.rounds)}
        run = self.client.create_run(experiment_id, run_name=config.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, v[:_PARAM_LENGTH]) for k, v in flatten(config.model_dump(mode="json"))]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        stored.write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id,
                                      "experiment_id": experiment_id}) + "\n")
        logger.info("MLflow: run %s in experiment %r at %s", self.run_id, config.tracking.experiment, self.uri)

    def log_round(self, round_: int, rows: Iterable[dict[str, Any]]) -> None:
        """The metrics of one round's rows, ``step`` = ``round_``."""
        if not self.active:
            return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, value, timestamp, round_) for row in rows for key, value in row_metrics(row).items()]

        def log() -> None:
            for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
                self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

        self._guard(f"round {round_}", log)

    def finish(self, class_names: list[str]) -> None:
        """The run's files as artifacts, the class names as a parameter, status FINISHED."""
        if not self.active:
            return

        def log() -> None:
            from fedfms.experiments.report import plot_dice_per_round

            self.client.log_param(self.run_id, "class_names", json.dumps(class_names))
            for name in ARTIFACTS:
                if (self.run_dir / name).exists():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            if (self.run_dir / BEST_MODEL).is_dir():
                self.client.log_artifacts(self.run_id, str(self.run_dir / BEST_MODEL), BEST_MODEL)
            with tempfile.TemporaryDirectory() as scratch:
                plot = Path(scratch) / "dice_per_round.png"
                plot_dice_per_round([self.run_dir], [self.run_dir.name], plot)
                self.client.log_artifact(self.run_id, str(plot), "plots")
            self.client.set_terminated(self.run_id, "FINISHED")

        self._guard("finish", log)


def attach_artifacts(run_dirs: Iterable[Path], files: Iterable[Path], folder: str = "report") -> None:
    """Log ``files`` (a report and its plots) into the MLflow run of each run folder that has
    one (``mlflow_run.json``); a store that fails gives one warning per run and nothing else."""
    files = [f for f in files if f.exists()]
    for run_dir in run_dirs:
        stored = Path(run_dir) / RUN_ID_FILE
        if not stored.exists():
            continue
        link = json.loads(stored.read_text())
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=link["tracking_uri"])
            for path in files:
                client.log_artifact(link["run_id"], str(path), folder)
        except Exception as err:  # noqa: BLE001 - as in MlflowRun._guard
            logger.warning("MLflow tracking at %s failed (report of %s: %s); the report stays in its folder",
                           link["tracking_uri"], run_dir, type(err).__name__)
