"""The server's side of a round against a fake Grid: the round's deadline holds even when a
pull blocks (a site that died mid-upload), and a restarted site takes its place again."""

import time

import pytest
from fake_grid import FakeGrid
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedfms.config import DataConfig, RunConfig
from fedfms.federated import protocol as P
from fedfms.federated.exchange import exchange
from fedfms.federated.server import Node, rejoin

pytestmark = pytest.mark.usefixtures("task_identity")


def _query(node: int) -> Message:
    return Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY)


def test_the_timeout_holds_while_a_pull_is_blocked_by_a_half_uploaded_reply():
    grid = FakeGrid([1, 2], {1: RecordDict(), 2: RecordDict()}, stalled=(2,))
    start = time.monotonic()
    replies = exchange(grid, [_query(1), _query(2)], timeout=1.0)
    assert time.monotonic() - start < 2.0
    grid.release.set()
    assert replies == []  # the blocked pull carried both replies: none arrived in time


def test_replies_are_paired_with_their_destination_and_missing_nodes_left_out():
    grid = FakeGrid([1, 2, 3], {1: RecordDict(), 3: RecordDict()})
    replies = exchange(grid, [_query(1), _query(2), _query(3)], timeout=1.0)
    assert sorted(node for node, _ in replies) == [1, 3]


def _info(client: str, digest: str = "d") -> RecordDict:
    return RecordDict({P.INFO: ConfigRecord({"client": client, "num-train": 4, "num-val": 1, "num-samples": 5,
                                             "class-names": '["x"]', P.FROZEN_DIGEST: digest})})


def test_a_restarted_site_with_a_new_node_id_takes_its_place_and_strangers_are_left_out():
    config = RunConfig(data=DataConfig(clients=["A", "B"]))
    nodes = [Node(1, "A", 4, 1, 5, ["x"], "d"), Node(2, "B", 4, 1, 5, ["x"], "d")]
    grid = FakeGrid([1, 7, 8, 9], {7: _info("B"), 8: _info("Z"), 9: _info("A", digest="other")})
    ignored: set[int] = set()
    after = rejoin(grid, nodes, config, timeout=2.0, ignored=ignored)
    assert [(n.client, n.node_id) for n in after] == [("A", 1), ("B", 7)]
    assert ignored == {8, 9}
    asked = len(grid.sent)
    assert rejoin(grid, after, config, timeout=2.0, ignored=ignored) == after and len(grid.sent) == asked
