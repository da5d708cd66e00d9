"""Browser check of MLflow tracking: a real ``mlflow server`` on loopback, a short centralized run
logged to it, and headless Chromium (Debian's ``chromium``) opening the run's metric chart in the
MLflow UI; the screenshot goes to ``docs/figures/mlflow_run.png`` (or ``--out``). The check
fails unless the rendered page (``--dump-dom``) names the Dice metric, holds a plotly chart and
shows no error.

    PYTHONPATH=src .venv/bin/python benchmarks/mlflow_screenshot.py [--data DIR] [--rounds 6]

``--data``: prepared client folders (default: a small synthetic federation).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrackingConfig, TrainConfig
from fedfms.data import make_synthetic_federation
from fedfms.run.mlflow_tracking import RUN_ID_FILE
from fedfms.train.centralized import train_centralized

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                                "--artifacts-destination", str(folder / "artifacts")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.terminate()
                raise SystemExit("mlflow server did not start") from None
            time.sleep(0.5)


def chromium(profile: Path, *args: str) -> str:
    """Headless Chromium with a throw-away profile and nothing fetched but the page; its stdout."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--no-first-run", "--disable-sync",
                           f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1900,900",
                           "--virtual-time-budget=20000", *args], check=True, capture_output=True, text=True,
                          timeout=180).stdout


def check_page(url: str, metric: str, profile: Path) -> None:
    """The rendered page names the metric, draws a chart and shows no error."""
    dom = chromium(profile, "--dump-dom", url)
    problems = [text for text, wanted in ((metric, True), ("plotly", True), ("Error while loading", False))
                if (text in dom) != wanted]
    if problems:
        raise SystemExit(f"{url}: the MLflow UI page is not the run's metric chart ({problems})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared client folders (default: synthetic)")
    parser.add_argument("--unseen", default="site-D")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/mlflow_run.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        root = args.data
        if root is None:
            root = scratch / "data"
            make_synthetic_federation(root, num_clients=4, image_size=32, mask_size=32, samples_per_client=(12,) * 4)
        server, url = start_server(scratch)
        try:
            config = RunConfig(name="mlflow-ui-check", output_dir=scratch / "run",
                               data=DataConfig(root=root, unseen=args.unseen),
                               model=ModelConfig(arch="unet", image_size=32, unet={"channels": (8, 16)}),
                               train=TrainConfig(batch_size=4, lr=3e-3), federation=FederationConfig(rounds=args.rounds),
                               tracking=TrackingConfig(mlflow_uri=url))
            train_centralized(config)
            link = json.loads((config.output_dir / RUN_ID_FILE).read_text())
            metric = f"eval/{args.unseen}/dice"
            query = urllib.parse.urlencode({
                "runs": json.dumps([link["run_id"]]), "metric": json.dumps(metric),
                "experiments": json.dumps([link["experiment_id"]]), "plot_metric_keys": json.dumps([metric]),
                "plot_layout": "{}", "x_axis": "step", "y_axis_scale": "linear", "line_smoothness": 1,
                "show_point": "true", "deselected_curves": "[]", "last_linear_y_axis_range": "[]"})
            page = f"{url}/#/metric?{query}"
            args.out.parent.mkdir(parents=True, exist_ok=True)
            check_page(page, metric, scratch / "chromium")
            chromium(scratch / "chromium", f"--screenshot={args.out}", page)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{page}\n-> {args.out}")


if __name__ == "__main__":
    main()
