"""MLflow tracking of a run: a real local store (SQLite), a real ``mlflow server`` on loopback,
resume into the same MLflow run, and a tracking server that is down."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrackingConfig, TrainConfig
from fedfms.data import make_synthetic_federation
from fedfms.experiments.report import write_loco_report
from fedfms.run.log import read_rows
from fedfms.run.mlflow_tracking import RUN_ID_FILE, row_metrics
from fedfms.train.centralized import train_centralized


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    root = tmp_path / "prostate"
    make_synthetic_federation(root, num_clients=3, num_classes=2, image_size=32, mask_size=32,
                              samples_per_client=(8, 8, 8), seed=1)
    return RunConfig(name="tracked", output_dir=tmp_path / "run", data=DataConfig(root=root, unseen="site-B"),
                     model=ModelConfig(arch="unet", num_classes=2, image_size=32, unet={"channels": (4, 8)}),
                     train=TrainConfig(batch_size=4, lr=1e-3), federation=FederationConfig(rounds=2))


def _tracked(config: RunConfig, uri: str) -> RunConfig:
    return config.model_copy(update={"tracking": TrackingConfig(mlflow_uri=uri)})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_id(config: RunConfig) -> str:
    import json

    return json.loads((config.output_dir / RUN_ID_FILE).read_text())["run_id"]


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_rows_become_metrics_per_client_and_class_with_any_extra_number() -> None:
    eval_row = {"kind": "eval", "round": 3, "client": "UCL", "role": "unseen", "split": "test", "dice": 0.5,
                "iou": 0.25, "dice_per_class": [0.4, float("nan")], "iou_per_class": [0.3, 0.2], "images": 7}
    train_row = {"kind": "train", "round": 3, "client": "BIDMC", "loss": 0.7, "loss_per_epoch": [0.7],
                 "bytes_sent": 1024, "epsilon": 2.5}
    assert row_metrics(eval_row) == {"eval/UCL/dice": 0.5, "eval/UCL/iou": 0.25, "eval/UCL/dice_per_class/1": 0.4,
                                     "eval/UCL/iou_per_class/1": 0.3, "eval/UCL/iou_per_class/2": 0.2,
                                     "eval/UCL/images": 7.0}
    assert row_metrics(train_row) == {"train/BIDMC/loss": 0.7, "train/BIDMC/bytes_sent": 1024.0,
                                      "train/BIDMC/epsilon": 2.5}


def test_local_store_gets_params_tags_metrics_artifacts_and_resume_continues_the_run(config: RunConfig,
                                                                                     tmp_path: Path) -> None:
    tracked = _tracked(config, str(tmp_path / "mlflow"))  # a local folder: an SQLite store in it
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    train_centralized(tracked)
    run_id = _run_id(tracked)
    train_centralized(tracked.with_overrides({"federation.rounds": 3}), resume=True)
    assert _run_id(tracked) == run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["federation.rounds"] == "2" and run.data.params["model.arch"] == "unet"
    assert run.data.tags["rounds"] == "3"  # parameters are immutable in MLflow; the resume's rounds are a tag
    assert {k: run.data.tags[k] for k in ("dataset", "backbone", "mode", "unseen", "kind")} == {
        "dataset": "prostate", "backbone": "unet", "mode": "full", "unseen": "site-B", "kind": "centralized"}
    dice = client.get_metric_history(run_id, "eval/site-B/dice")
    logged = {r["round"]: r["dice"] for r in read_rows(tracked.output_dir) if r.get("client") == "site-B"}
    assert {m.step: m.value for m in dice} == pytest.approx(logged) and sorted(logged) == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "eval/site-A/dice_per_class/2")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "train/pooled/loss")] == [1, 2, 3]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert {"results.json", "config.yaml", "metrics.jsonl", "plots/dice_per_round.png",
            "best_model/model.safetensors", "best_model/fedfms_model.json"} <= _artifacts(client, run_id)
    assert (tmp_path / "mlflow" / "mlartifacts" / "fedfms").is_dir()  # beside the store, not in the working dir
    write_loco_report([tracked.output_dir], tmp_path / "report")  # fedfms report joins the tracked run
    assert {"report/report.md", "report/unseen_dice_per_round.png"} <= _artifacts(client, run_id)


def test_tracking_server_down_warns_once_and_training_completes(config: RunConfig, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    tracked = _tracked(config, f"http://127.0.0.1:{_free_port()}")
    with caplog.at_level(logging.WARNING, logger="fedfms"):
        results = train_centralized(tracked)
    warnings = [r for r in caplog.records if "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on" in warnings[0].getMessage()
    assert [r["round"] for r in read_rows(tracked.output_dir) if r["kind"] == "round"] == [1, 2]
    assert results["best_round"] in (1, 2) and (tracked.output_dir / "best_model").is_dir()
    assert not (tracked.output_dir / RUN_ID_FILE).exists()


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real ``mlflow server`` on a free loopback port, SQLite store, artifacts served by it."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
         str(tmp_path / "artifacts")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow  # the server takes 10-40 s to start on a shared CPU
def test_run_is_logged_to_a_tracking_server_on_loopback(config: RunConfig, mlflow_server: str) -> None:
    tracked = _tracked(config.with_overrides({"federation.rounds": 1}), mlflow_server)
    train_centralized(tracked)
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(_run_id(tracked))
    assert run.info.status == "FINISHED" and run.data.tags["unseen"] == "site-B"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "round/mean_val_dice")] == [1]
    assert "best_model/model.safetensors" in _artifacts(client, run.info.run_id)


def test_sites_are_not_sent_the_tracking_section(config: RunConfig) -> None:
    from flwr.app import RecordDict

    from fedfms.federated import protocol as P
    from fedfms.federated.handlers import _run_config
    from fedfms.federated.server import _config_record

    tracked = _tracked(config, "https://user:secret@tracker.example.org")
    record = _config_record(tracked)
    assert "secret" not in str(dict(record))
    received = _run_config(RecordDict({P.CONFIG: record}))
    assert received.tracking.mlflow_uri is None and received.model == tracked.model
