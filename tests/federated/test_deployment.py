"""A real deployment on loopback: one SuperLink and three SuperNodes (one per site, each given
its own data folder through its node config) talking HTTPS with certificates made here, each
SuperNode authenticated by its own key registered with ``flwr supernode register``; the run
submitted with ``flwr run`` on this repository. A node that trusts no CA and a node whose key
is not registered are both refused. After round 1 one training site's SuperNode is killed:
round 2 ends within its timeouts without it, the run goes on with the other site (the default
``min_train_clients``), and the same site restarted with its key trains again in the last round.
Each SuperNode answers all its messages through one warm site worker, which ends with it.

Every process gets free ports chosen here, its own FLWR_HOME under ``tmp_path`` and a log file
(``tmp_path/logs``); all of them, and whatever they started, are stopped when the test ends,
passed or failed. Select with ``-m deployment``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path

import psutil
import pytest
from deployment import REPO, Deployment, free_port, https_get, make_certificates, make_node_key, plain_http_answers

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig, save_config
from fedfms.run.log import read_rows

pytestmark = pytest.mark.deployment

SITES = ("site-A", "site-B", "site-C")
UNSEEN = "site-C"
CONNECTION = "fedfms-test"
DYING = "site-B"
RUN_TIMEOUT_S = 360
ROUNDS = 4
ROUND_TIMEOUT_S = 90


def _deployment_config(run_dir: Path, rounds: int = ROUNDS, secure_aggregation: bool = False) -> RunConfig:
    """The server's run: no data root (the server holds no data), the site names it waits for."""
    return RunConfig(
        name="deployment-test", output_dir=run_dir,
        model=ModelConfig(backbone="tiny", mode="msa", num_classes=1, image_size=64),
        data=DataConfig(clients=list(SITES), unseen=UNSEEN),
        train=TrainConfig(batch_size=4, lr=1e-3),
        federation=FederationConfig(rounds=rounds, connect_timeout_s=120, round_timeout_s=ROUND_TIMEOUT_S,
                                    secure_aggregation=secure_aggregation),
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
        superlink = deployment.superlink(port, certs, node_auth=True)
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


def tail_of(process) -> str:
    return process.log.read_text(errors="replace")[-3000:]


def _round_rows(run_dir: Path) -> dict[int, dict]:
    return {r["round"]: r for r in read_rows(run_dir) if r["kind"] == "round"}


def test_authenticated_supernodes_over_tls_survive_a_site_that_dies_and_comes_back(federation, tmp_path):
    started = time.monotonic()
    certs = make_certificates(tmp_path / "tls")
    keys = {name: make_node_key(tmp_path / "keys", name) for name in (*SITES, "stranger", "impostor")}
    run_dir = tmp_path / "run"
    config_path = tmp_path / "run.yaml"
    save_config(_deployment_config(run_dir), config_path)

    run_id = None
    with Deployment(tmp_path) as deployment:
        try:
            port = _start_superlink(deployment, certs)
            deployment.write_cli_config(CONNECTION, port, certs.ca)
            node_ids = {site: deployment.register_node(CONNECTION, keys[site][1], site) for site in SITES}
            assert len(set(node_ids.values())) == len(SITES)
            # anyone who reaches the Control API can register a key (see docs/deployment.md, "Who may
            # serve a site"): the impostor's key is registered, under a name of its choosing
            impostor_id = deployment.register_node(CONNECTION, keys["impostor"][1], f"totally-{DYING}")

            # TLS only: no plain HTTP on the port, and a SuperNode that does not trust our CA
            # (system certificates only) is refused at the handshake and gives up; one that
            # trusts it but holds an unregistered key is refused by the authentication.
            assert not plain_http_answers("127.0.0.1", port), "the SuperLink answers unencrypted HTTP"
            give_up = ("--max-retries", "1", "--max-wait-time", "10")
            untrusted = deployment.supernode("untrusted", port, free_port(), "data-dir='/nonexistent'", ca=None,
                                             key=keys["stranger"][0], extra=give_up)
            stranger = deployment.supernode("stranger", port, free_port(), f"data-dir='{federation / 'site-A'}'",
                                            ca=certs.ca, key=keys["stranger"][0], extra=give_up)

            def site_node(site: str, name: str | None = None):
                return deployment.supernode(name or site, port, free_port(), f"data-dir='{federation / site}'",
                                            ca=certs.ca, key=keys[site][0])

            nodes = {site: site_node(site) for site in SITES}
            run_id = deployment.flwr_run(REPO, CONNECTION, f"config='{config_path}' run-dir='{run_dir}'")

            untrusted.popen.wait(timeout=60)
            assert untrusted.popen.returncode != 0
            assert "CERTIFICATE_VERIFY_FAILED" in untrusted.log.read_text(errors="replace")
            stranger.popen.wait(timeout=60)
            assert stranger.popen.returncode != 0, "a node with an unregistered key was let in"
            assert "Failed to activate SuperNode" in stranger.log.read_text(errors="replace"), tail_of(stranger)
            superlink_log = next(p for p in deployment.processes if p.name == "superlink").log
            assert "No SuperNode found with the given public key" in superlink_log.read_text(errors="replace")

            deployment.wait_until(lambda: 1 in _round_rows(run_dir) or _serverapp_ended(deployment), RUN_TIMEOUT_S,
                                  "round 1", alive=("superlink", *SITES), interval=0.5)
            deployment.kill(nodes[DYING])  # round 2 has just been sent out
            alive = tuple(s for s in SITES if s != DYING)
            deployment.wait_until(lambda: 2 in _round_rows(run_dir) or _serverapp_ended(deployment), RUN_TIMEOUT_S,
                                  "round 2 without the dead site", alive=("superlink", *alive), interval=0.5)
            restarted = site_node(DYING, name=f"{DYING}-restarted")  # the same key: the same node id
            # a copy of site-B's prepared folder (its manifest says "site-B") behind the impostor's key
            impostor = deployment.supernode("impostor", port, free_port(), f"data-dir='{federation / DYING}'",
                                            ca=certs.ca, key=keys["impostor"][0])

            results_path = run_dir / "results.json"
            deployment.wait_until(lambda: results_path.exists() or _serverapp_ended(deployment), RUN_TIMEOUT_S,
                                  "results.json of the run", alive=("superlink", *alive), interval=1.0)
            assert results_path.exists(), "the ServerApp ended without writing results.json"
            deployment.wait_until(lambda: _serverapp_ended(deployment), 30, "the ServerApp to exit")
            status = deployment.run_status(CONNECTION, run_id)
            assert status == "finished:completed", status

            rows = read_rows(run_dir)
            rounds = _round_rows(run_dir)
            assert sorted(rounds) == list(range(1, ROUNDS + 1))
            train = [r for r in rows if r["kind"] == "train"]
            trained = {n: {r["client"] for r in train if r["round"] == n} for n in rounds}
            assert trained[1] == {"site-A", "site-B"} and trained[2] == {"site-A"}
            assert trained[ROUNDS] == {"site-A", "site-B"}, trained  # the restarted site is back
            assert any(f.startswith(f"{DYING} (train)") for f in rounds[2]["failed"]), rounds[2]
            # the round without the dead site: its train and evaluate exchanges, each within the timeout
            assert rounds[2]["seconds"] < 2 * ROUND_TIMEOUT_S + 15, rounds[2]
            assert all(r["bytes_sent"] > 0 and r["bytes_received"] > 0 for r in train)
            unseen = [r for r in rows if r["kind"] == "eval" and r["client"] == UNSEEN]
            assert [r["round"] for r in unseen] == list(range(1, ROUNDS + 1))
            assert all(r["role"] == "unseen" and r["split"] == "test" and r["images"] == 8 for r in unseen)
            assert all("best_compared_on" in r for r in rounds.values())

            # every site answered through one warm worker; the restarted site through a new one
            workers = {site: [int(pid) for pid in re.findall(r"site worker pid (\d+): message \d+ \(",
                                                              p.log.read_text(errors="replace"))]
                       for site, p in [*nodes.items(), (f"{DYING}-restarted", restarted)]}
            # site-A: the query, a train and an evaluate message per round (the best round's scores are reused)
            assert len(set(workers["site-A"])) == 1 and len(workers["site-A"]) == 1 + 2 * ROUNDS, workers
            assert len(set(workers[f"{DYING}-restarted"])) == 1
            assert not set(workers[DYING]) & set(workers[f"{DYING}-restarted"])

            # the impostor was asked who it is, refused by the server (bound to site-B's key), never trained
            server_log = deployment.run_log(CONNECTION, run_id)
            assert f"node {impostor_id} claims client '{DYING}': refused, its key" in server_log, server_log[-3000:]
            assert "rejoined" not in server_log or f"as node {impostor_id}" not in server_log
            assert not re.search(r"message \d+ \(train\)", impostor.log.read_text(errors="replace")), tail_of(impostor)

            results = json.loads(results_path.read_text())
            assert results["best_round"] in rounds and "both rounds" in results["best_round_rule"]
            assert set(results["clients"]) == set(SITES) and results["clients"][UNSEEN]["role"] == "unseen"
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
    # stopping the SuperNodes ends their workers too
    for pid in {pid for pids in workers.values() for pid in pids}:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=30)
    print(f"deployment test: {time.monotonic() - started:.0f} s")


def _submit(deployment: Deployment, folder: Path, **settings) -> tuple[int, Path, set]:
    """``flwr run`` of the test's run with ``settings``: the run id, its folder, and the ServerApp
    processes seen before it (see :func:`_finished`)."""
    folder.mkdir(parents=True)
    save_config(_deployment_config(folder / "run", **settings), folder / "run.yaml")
    earlier = set(deployment.seen("flwr-serverapp"))
    run_id = deployment.flwr_run(REPO, CONNECTION, f"config='{folder / 'run.yaml'}' run-dir='{folder / 'run'}'")
    return run_id, folder / "run", earlier


def _finished(deployment: Deployment, run_id: int, earlier: set) -> str:
    """Wait until the run's ServerApp (one not among ``earlier``) has come and gone, then until
    the SuperLink reports the run finished; its status."""
    def ended() -> bool:
        new = [identity for identity in deployment.seen("flwr-serverapp") if identity not in earlier]
        return bool(new) and not any(deployment.is_alive(identity) for identity in new)

    deployment.wait_until(ended, RUN_TIMEOUT_S, f"the ServerApp of run {run_id}", alive=("superlink", *SITES))
    status: list[str] = []

    def reported() -> bool:
        status.append(deployment.run_status(CONNECTION, run_id))
        return status[-1].startswith("finished")

    deployment.wait_until(reported, 30, f"run {run_id} reported finished", interval=1.0)
    return status[-1]


def test_secure_aggregation_between_authenticated_supernodes_whose_sites_require_it(federation, tmp_path):
    """SecAgg+ in the real deployment: TLS, every SuperNode authenticated by its registered key
    and requiring secure aggregation in its own node config. The SecAgg+ run is trained by both
    training sites, each update arriving masked; the same run without secure aggregation is
    refused by each site naming the rule (the coordinator cannot switch it off) and stops as a
    run without enough sites does, nothing trained."""
    started = time.monotonic()
    certs = make_certificates(tmp_path / "tls")
    keys = {name: make_node_key(tmp_path / "keys", name) for name in SITES}
    with Deployment(tmp_path) as deployment:
        try:
            port = _start_superlink(deployment, certs)
            deployment.write_cli_config(CONNECTION, port, certs.ca)
            for site in SITES:
                deployment.register_node(CONNECTION, keys[site][1], site)
                deployment.supernode(site, port, free_port(), f"data-dir='{federation / site}' "
                                     "require-secure-aggregation=true", ca=certs.ca, key=keys[site][0])

            secure_id, secure_dir, earlier = _submit(deployment, tmp_path / "secure", rounds=1, secure_aggregation=True)
            assert _finished(deployment, secure_id, earlier) == "finished:completed", deployment.run_log(CONNECTION, secure_id)
            train = [r for r in read_rows(secure_dir) if r["kind"] == "train"]
            assert {r["client"] for r in train} == {"site-A", "site-B"}
            assert all(r["secure_aggregation"] for r in train)
            # each site's reply is its masked, quantised update (integers modulo 2^32 as 64-bit
            # values), not the float32 model that was sent
            assert all(r["bytes_received"] > 1.5 * r["bytes_sent"] for r in train), train
            assert json.loads((secure_dir / "results.json").read_text())["clients"][UNSEEN]["role"] == "unseen"
            assert "refused" not in deployment.run_log(CONNECTION, secure_id)

            plain_id, plain_dir, earlier = _submit(deployment, tmp_path / "plain", rounds=1)
            assert _finished(deployment, plain_id, earlier) == "finished:failed"
            server_log = deployment.run_log(CONNECTION, plain_id)
            for site in ("site-A", "site-B"):
                assert f"{site}: refused by the site's rule require-secure-aggregation" in server_log, server_log[-3000:]
            assert not [r for r in read_rows(plain_dir) if r["kind"] == "train"]
            assert not (plain_dir / "results.json").exists()
        except BaseException:
            print(f"deployment failed after {time.monotonic() - started:.0f} s; logs in {tmp_path / 'logs'}")
            print(deployment.logs(lines=60))
            raise
    print(f"secure aggregation deployment test: {time.monotonic() - started:.0f} s")
