"""The server's side of a round against a fake Grid: the round's deadline holds even when a
pull blocks (a site that died mid-upload), and a restarted site takes its place again."""

import time

import pytest
import torch
from fake_grid import FakeGrid
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict

from fedfms.config import DataConfig, FederationConfig, RunConfig
from fedfms.federated import protocol as P
from fedfms.federated.exchange import exchange
from fedfms.federated.server import FederationError, Node, _train_round, rejoin
from fedfms.federated.strategy import make_strategy
from fedfms.federated.wire import record_shapes, to_record
from fedfms.run.tracker import RESUME_DEPLOYMENT

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
    grid = FakeGrid([1, 7, 8, 9, 10, 11], {7: _info("B"), 8: _info("Z"), 9: _info("A", digest="other"),
                                            11: Error(code=0, reason="broken")})  # 10: silent
    ignored: set[int] = set()
    after = rejoin(grid, nodes, config, timeout=1.0, ignored=ignored, pinned={})
    assert [(n.client, n.node_id) for n in after] == [("A", 1), ("B", 7)]
    assert ignored == {8, 9, 11}
    asked = len(grid.sent)
    assert rejoin(grid, after, config, timeout=1.0, ignored=ignored, pinned={}) == after
    assert [m.metadata.dst_node_id for m in list(grid.sent.values())[asked:]] == [10]  # only the silent one again


def test_too_few_updates_stop_the_run_saying_how_this_runtime_resumes():
    nodes = [Node(1, "A", 4, 1, 5, ["x"], "d"), Node(2, "B", 4, 1, 5, ["x"], "d")]
    config = RunConfig(data=DataConfig(clients=["A", "B"]), federation=FederationConfig(round_timeout_s=0.5))
    arrays = to_record({"w": torch.zeros(2)})
    grid = FakeGrid([1, 2], {})  # both sites silent
    with pytest.raises(FederationError, match="0 valid updates, 1 required.*resume=true in flwr run's --run-config"):
        _train_round(grid, make_strategy(config.federation, 1), nodes, {n.node_id: n for n in nodes}, arrays,
                     record_shapes(arrays), config, 1, 1, RESUME_DEPLOYMENT)
