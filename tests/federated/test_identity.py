"""Who may serve a site: bound to the key a SuperNode authenticates with, never to the name a
node reports (a copy of a site's prepared folder reports that name too)."""

import logging
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from deployment import make_node_key
from fake_grid import FakeGrid
from flwr.app import ConfigRecord, RecordDict
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from fedfms.config import DataConfig, FederationConfig, RunConfig
from fedfms.errors import FedfmsError
from fedfms.federated import protocol as P
from fedfms.federated.identity import key_fingerprint
from fedfms.federated.server import FederationError, Node, meet_nodes, rejoin

pytestmark = pytest.mark.usefixtures("task_identity")


def _info(client: str) -> RecordDict:
    return RecordDict({P.INFO: ConfigRecord({"client": client, "num-train": 4, "num-val": 1, "num-samples": 5,
                                             "class-names": '["x"]', P.FROZEN_DIGEST: "d"})})


def _registered_key(folder, name: str) -> tuple[bytes, str]:
    """A node key pair as ``ssh-keygen`` makes it: (the public key as the SuperLink stores it,
    the ``.pub`` file's path)."""
    _, public = make_node_key(folder, name)
    key = serialization.load_ssh_public_key(public.read_bytes())
    return public_key_to_bytes(key), str(public)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed")
def test_the_fingerprint_is_the_one_ssh_keygen_prints(tmp_path):
    stored, pub = _registered_key(tmp_path, "site")
    printed = subprocess.run(["ssh-keygen", "-lf", pub], capture_output=True, text=True, check=True).stdout.split()[1]
    assert key_fingerprint(stored) == printed
    assert key_fingerprint(b"") == ""


def test_a_second_node_claiming_a_live_site_without_keys_is_refused_and_accepted_once_the_site_is_gone(caplog):
    config = RunConfig(data=DataConfig(clients=["A", "B"]))
    nodes = [Node(1, "A", 4, 1, 5, ["x"], "d"), Node(2, "B", 4, 1, 5, ["x"], "d")]
    grid = FakeGrid([1, 2, 7], {7: _info("B")})
    ignored: set[int] = set()
    with caplog.at_level(logging.WARNING, logger="fedfms"):
        after = rejoin(grid, nodes, config, timeout=1.0, ignored=ignored, pinned={})
    assert [(n.client, n.node_id) for n in after] == [("A", 1), ("B", 2)]  # the real site keeps its place
    assert ignored == {7}
    assert "node 7 claims client 'B': refused, client 'B' (node 2) serves that site and is still connected" in caplog.text

    grid = FakeGrid([1, 8], {8: _info("B")})  # site B's node is gone; a restarted one (new id) comes back
    after = rejoin(grid, nodes, config, timeout=1.0, ignored=set(), pinned={})
    assert [(n.client, n.node_id) for n in after] == [("A", 1), ("B", 8)]


def test_a_node_with_another_key_never_takes_a_keyed_site_even_when_the_site_is_offline(tmp_path, caplog):
    config = RunConfig(data=DataConfig(clients=["A", "B"]))
    b_key, _ = _registered_key(tmp_path, "site-B")
    attacker_key, _ = _registered_key(tmp_path, "attacker")
    b_print = key_fingerprint(b_key)
    nodes = [Node(1, "A", 4, 1, 5, ["x"], "d"), Node(2, "B", 4, 1, 5, ["x"], "d", key=b_print)]
    pinned = {"B": b_print}
    grid = FakeGrid([1, 9], {9: _info("B")}, keys={9: attacker_key})  # the real B is offline
    ignored: set[int] = set()
    with caplog.at_level(logging.WARNING, logger="fedfms"):
        after = rejoin(grid, nodes, config, timeout=1.0, ignored=ignored, pinned=pinned)
    assert after == nodes and ignored == {9}
    assert f"node 9 claims client 'B': refused, its key {key_fingerprint(attacker_key)} is not the key 'B' is bound to ({b_print})" in caplog.text

    grid = FakeGrid([1, 12], {12: _info("B")}, keys={12: b_key})  # B's key, registered again: a new node id
    assert rejoin(grid, nodes, config, timeout=1.0, ignored=set(), pinned=pinned)[1].node_id == 12


def test_configured_site_keys_refuse_an_impostor_at_the_start_and_admit_the_site(tmp_path, caplog):
    a_key, _ = _registered_key(tmp_path, "site-A")
    b_key, _ = _registered_key(tmp_path, "site-B")
    attacker_key, _ = _registered_key(tmp_path, "attacker")
    keys = {"A": key_fingerprint(a_key), "B": key_fingerprint(b_key)}
    config = RunConfig(data=DataConfig(clients=["A", "B"]),
                       federation=FederationConfig(site_keys=keys, connect_timeout_s=3))
    grid = FakeGrid([1, 5, 2], {1: _info("A"), 5: _info("B"), 2: _info("B")},
                    keys={1: a_key, 5: attacker_key, 2: b_key})
    with caplog.at_level(logging.WARNING, logger="fedfms"):
        met = meet_nodes(grid, config, expected=2, pinned=keys)
    assert [(n.client, n.node_id, n.key) for n in met] == [("A", 1, keys["A"]), ("B", 2, keys["B"])]
    assert "node 5 claims client 'B': refused" in caplog.text

    grid = FakeGrid([1, 5], {1: _info("A"), 5: _info("B")}, keys={1: a_key, 5: attacker_key})
    with pytest.raises(FederationError, match=r"only 1 of 2 nodes connected and admitted within 3 s \(refused: nodes \[5\]\)"):
        meet_nodes(grid, config, expected=2, pinned=keys)


def test_site_keys_must_be_fingerprints_of_known_clients():
    base = RunConfig(data=DataConfig(clients=["A"]))
    with pytest.raises(FedfmsError, match="federation.site_keys.A: String should match pattern"):
        base.with_overrides({"federation.site_keys": {"A": "md5:00"}})
    with pytest.raises(FedfmsError, match=r"site_keys names \['Z'\], not among data.clients"):
        base.with_overrides({"federation.site_keys": {"Z": "SHA256:" + "a" * 43}})
