"""A real deployment on loopback: one SuperLink and three SuperNodes (one per site, each given
its own data folder through its node config) talking HTTPS with certificates made here, the
run submitted with ``flwr run`` on this repository. After round 1 one training site's SuperNode
is killed; the run goes on with the other and completes its three rounds.

Every process gets free ports chosen here, its own FLWR_HOME under ``tmp_path`` and a log file
(``tmp_path/logs``); all of them, and whatever they started, are stopped when the test ends,
passed or failed. Select with ``-m deployment``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from deployment import REPO, Deployment, free_port, https_get, make_certificates, plain_http_answers

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig, save_config
from fedfms.run.log import read_rows

pytestmark = pytest.mark.deployment

SITES = ("site-A", "site-B", "site-C")
UNSEEN = "site-C"
CONNECTION = "fedfms-test"
DYING = "site-B"
RUN_TIMEOUT_S = 360


def _deployment_config(run_dir: Path) -> RunConfig:
    """The server's run: no data root (the server holds no data), the site names it waits for."""
    return RunConfig(
        name="deployment-test", output_dir=run_dir,
        model=ModelConfig(backbone="tiny", mode="msa", num_classes=1, image_size=64),
        data=DataConfig(clients=list(SITES), unseen=UNSEEN),
        train=TrainConfig(batch_size=4, lr=1e-3),
        federation=FederationConfig(rounds=3, connect_timeout_s=120, round_timeout_s=60, min_train_clients=1),
    )


def _answers(url: str, ca: Path) -> bool:
    try:
        return https_get(url, ca, timeout=2) == 200
    except Exception:  # not up yet: refused, reset, half-started server
        return False


def _start_superlink(deployment: Deployment, certs, attempts: int = 3) -> int:
    """Start the SuperLink on a free port (another one if that port was taken meanwhile) and
    wait until it answers over HTTPS; returns the port."""
    for attempt in range(attempts):
        port = free_port()
        superlink = deployment.superlink(port, certs)
        try:
            deployment.wait_until(lambda: _answers(f"https://127.0.0.1:{port}/health", certs.ca), 60,
                                  "SuperLink answering over HTTPS", alive=("superlink",))
            return port
        except RuntimeError:  # exited, e.g. the port was taken
            if attempt == attempts - 1:
                raise
            superlink.name = f"superlink-failed-{attempt}"
    raise AssertionError("unreachable")


def _serverapp_ended(deployment: Deployment) -> bool:
    """A ServerApp process was seen and none is left."""
    seen = deployment.seen("flwr-serverapp")
    return bool(seen) and not any(deployment.is_alive(identity) for identity in seen)


def _rounds_done(run_dir: Path) -> list[int]:
    return [r["round"] for r in read_rows(run_dir) if r["kind"] == "round"]


def test_superlink_and_three_supernodes_over_tls_survive_a_dying_site(federation, tmp_path):
    started = time.monotonic()
    certs = make_certificates(tmp_path / "tls")
    run_dir = tmp_path / "run"
    config_path = tmp_path / "run.yaml"
    save_config(_deployment_config(run_dir), config_path)

    run_id = None
    with Deployment(tmp_path) as deployment:
        try:
            port = _start_superlink(deployment, certs)

            # TLS only: no plain HTTP on the port, and a SuperNode that does not trust our CA
            # (system certificates only) is refused at the handshake and gives up.
            assert not plain_http_answers("127.0.0.1", port), "the SuperLink answers unencrypted HTTP"
            untrusted = deployment.supernode("untrusted", port, free_port(), "data-dir='/nonexistent'", ca=None,
                                             extra=("--max-retries", "1", "--max-wait-time", "10"))

            nodes = {site: deployment.supernode(site, port, free_port(), f"data-dir='{federation / site}'", ca=certs.ca)
                     for site in SITES}
            deployment.write_cli_config(CONNECTION, port, certs.ca)
            run_id = deployment.flwr_run(REPO, CONNECTION, f"config='{config_path}' run-dir='{run_dir}'")

            untrusted.popen.wait(timeout=60)
            assert untrusted.popen.returncode != 0
            assert "CERTIFICATE_VERIFY_FAILED" in untrusted.log.read_text(errors="replace")

            deployment.wait_until(lambda: 1 in _rounds_done(run_dir) or _serverapp_ended(deployment), RUN_TIMEOUT_S,
                                  "round 1", alive=("superlink", *SITES), interval=0.5)
            deployment.kill(nodes[DYING])
            alive = tuple(s for s in SITES if s != DYING)

            results_path = run_dir / "results.json"
            deployment.wait_until(lambda: results_path.exists() or _serverapp_ended(deployment), RUN_TIMEOUT_S,
                                  "results.json of the run", alive=("superlink", *alive), interval=1.0)
            assert results_path.exists(), "the ServerApp ended without writing results.json"
            deployment.wait_until(lambda: _serverapp_ended(deployment), 30, "the ServerApp to exit")
            status = deployment.run_status(CONNECTION, run_id)
            assert status == "finished:completed", status

            rows = read_rows(run_dir)
            assert _rounds_done(run_dir) == [1, 2, 3]
            train = [r for r in rows if r["kind"] == "train"]
            assert {r["client"] for r in train if r["round"] == 1} == {"site-A", "site-B"}
            assert {r["client"] for r in train if r["round"] == 3} == {"site-A"}
            assert all(r["bytes_sent"] > 0 and r["bytes_received"] > 0 for r in train)
            failed = [f for r in rows if r["kind"] == "round" and r["round"] > 1 for f in r["failed"]]
            assert any(f.startswith(f"{DYING} (train)") for f in failed), failed
            unseen = [r for r in rows if r["kind"] == "eval" and r["client"] == UNSEEN]
            assert [r["round"] for r in unseen] == [1, 2, 3] and all(r["role"] == "unseen" for r in unseen)
            assert all(r["split"] == "test" and r["images"] == 8 for r in unseen)

            results = json.loads(results_path.read_text())
            assert results["best_round"] in (1, 2, 3)
            assert set(results["clients"]) == {"site-A", UNSEEN} and results["clients"][UNSEEN]["role"] == "unseen"
            assert (run_dir / "best_model").exists()
            clients = json.loads((run_dir / "clients.json").read_text())
            assert {c["client"]: c["role"] for c in clients} == {"site-A": "train", "site-B": "train",
                                                                 "site-C": "unseen"}
        except BaseException:
            print(f"deployment failed after {time.monotonic() - started:.0f} s; logs in {tmp_path / 'logs'}")
            print(deployment.logs(lines=60))
            if run_id is not None and any(p.name == "superlink" and p.running() for p in deployment.processes):
                print(f"----- flwr log {run_id} (the ServerApp) -----")
                print("\n".join(deployment.run_log(CONNECTION, run_id).splitlines()[-80:]))
            raise
    print(f"deployment test: {time.monotonic() - started:.0f} s")
