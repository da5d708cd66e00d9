"""Seconds per federated round in a real Flower deployment on loopback against the same run in
Flower's simulation runtime, measured one after the other in one invocation.

One synthetic federation (``--sites`` sites of ``--samples`` images at ``--image-size`` px; the
last site is the unseen one) and one run (tiny SAM in FedMSA mode, ``--rounds`` rounds of
``--epochs`` local epochs), run three ways:

* ``simulation``: :func:`fedfms.federated.simulation.simulate` (Ray; each ClientApp stays warm
  in its actor);
* ``deployment``: one SuperLink and one SuperNode per site over TLS on 127.0.0.1, the run
  submitted with ``flwr run``; every message goes through a fresh ``flwr-clientapp`` process
  to the node's warm site worker (the default, :mod:`fedfms.federated.worker`);
* ``deployment, site-worker=false``: the same, each message answered inside its own
  ``flwr-clientapp`` process (imports and model built every time), as before the worker.
* with ``--superexec-poll S``, also ``deployment, SuperExec poll S s``: the first deployment
  with ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=S`` in the SuperNodes' environment (how often a
  SuperNode's SuperExec looks for a message to start a ClientApp for; Flower's default 1 s).

Round 1 includes start-up (Ray, the workers' imports, the model), so the figure compared is the
median of rounds 2..N. The Flower processes are started and stopped with the deployment test's
harness (``tests/federated/deployment.py``: ports, TLS material, process clean-up).

    python benchmarks/deployment_round.py                       # 3 sites, 4 rounds
    python benchmarks/deployment_round.py --samples 32 --epochs 3 --image-size 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "federated"))

from deployment import Deployment, free_port, https_get, make_certificates  # noqa: E402

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig, save_config  # noqa: E402
from fedfms.data import make_synthetic_federation  # noqa: E402
from fedfms.federated.simulation import simulate  # noqa: E402
from fedfms.run.log import read_rows  # noqa: E402

CONNECTION = "fedfms-bench"
SUPEREXEC_POLL = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


def run_config(args: argparse.Namespace, out: Path, data: DataConfig) -> RunConfig:
    return RunConfig(
        name="deployment-round-bench", output_dir=out,
        model=ModelConfig(backbone="tiny", mode="msa", num_classes=1, image_size=args.image_size),
        data=data,
        train=TrainConfig(batch_size=4, lr=1e-3, local_epochs=args.epochs),
        federation=FederationConfig(rounds=args.rounds, connect_timeout_s=180, round_timeout_s=600),
    )


def round_seconds(run_dir: Path) -> list[float]:
    return [r["seconds"] for r in read_rows(run_dir) if r["kind"] == "round"]


def deploy(args: argparse.Namespace, root: Path, sites: list[str], work: Path, site_worker: bool,
           overrides: dict | None = None) -> list[float]:
    """Round seconds of the run (with ``overrides`` of its settings) in a loopback deployment
    (TLS, one SuperNode per site); its folder is ``work / "run"``."""
    run_dir = work / "run"
    work.mkdir(parents=True)
    config_path = work / "run.yaml"
    config = run_config(args, run_dir, DataConfig(clients=sites, unseen=sites[-1]))
    save_config(config.with_overrides(overrides) if overrides else config, config_path)
    certs = make_certificates(work / "tls")
    with Deployment(work) as deployment:
        port = free_port()
        deployment.superlink(port, certs)

        def answers() -> bool:
            try:
                return https_get(f"https://127.0.0.1:{port}/health", certs.ca, timeout=2) == 200
            except Exception:  # not up yet
                return False

        deployment.wait_until(answers, 60, "SuperLink", alive=("superlink",))
        deployment.write_cli_config(CONNECTION, port, certs.ca)
        extra = "" if site_worker else " site-worker=false"
        for site in sites:
            deployment.supernode(site, port, free_port(), f"data-dir='{root / site}'{extra}", ca=certs.ca)
        deployment.flwr_run(REPO, CONNECTION, f"config='{config_path}' run-dir='{run_dir}'")
        deployment.wait_until(lambda: (run_dir / "results.json").exists(), 60 * 60, "the run's results",
                              alive=("superlink", *sites), interval=1.0)
    return round_seconds(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--superexec-poll", type=float, default=None,
                        help="also a deployment with this FLWR_SUPEREXEC_TASK_POLL_INTERVAL (seconds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedfms-deploy-bench-") as folder:
        work = Path(folder)
        root = work / "data"
        make_synthetic_federation(root, num_clients=args.sites, num_classes=1, image_size=args.image_size,
                                  mask_size=args.image_size // 4, samples_per_client=(args.samples,) * args.sites,
                                  seed=0)
        sites = sorted(p.name for p in root.iterdir() if p.is_dir())
        measured: dict[str, list[float]] = {}
        started = time.perf_counter()
        simulate(run_config(args, work / "sim", DataConfig(root=root, unseen=sites[-1])))
        measured["simulation"] = round_seconds(work / "sim")
        measured["deployment (warm site worker)"] = deploy(args, root, sites, work / "deploy-warm", True)
        measured["deployment, site-worker=false"] = deploy(args, root, sites, work / "deploy-cold", False)
        if args.superexec_poll is not None:
            os.environ[SUPEREXEC_POLL] = str(args.superexec_poll)
            measured[f"deployment (warm site worker), SuperExec poll {args.superexec_poll:g} s"] = deploy(
                args, root, sites, work / "deploy-fast-poll", True)
    simulation = statistics.median(measured["simulation"][1:])
    print(f"\n{args.sites} sites x {args.samples} images at {args.image_size} px, tiny SAM FedMSA, {args.epochs} local "
          f"epoch(s), {args.rounds} rounds; {time.perf_counter() - started:.0f} s in all\n")
    print("| Runtime | round 1 s | rounds 2.. s (each) | median of rounds 2.. s | / simulation |")
    print("|---|---|---|---|---|")
    for name, seconds in measured.items():
        later = statistics.median(seconds[1:])
        print(f"| {name} | {seconds[0]:.1f} | {' '.join(f'{s:.1f}' for s in seconds[1:])} | {later:.1f} | "
              f"{later / simulation:.2f} |")


if __name__ == "__main__":
    main()
