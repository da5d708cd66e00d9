"""The server's side of a round against a fake Grid: the round's deadline holds even when a
pull blocks (a site that died mid-upload), and a restarted site takes its place again."""

import threading
import time

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedfms.config import DataConfig, RunConfig
from fedfms.federated import protocol as P
from fedfms.federated.exchange import exchange
from fedfms.federated.server import Node, rejoin

pytestmark = pytest.mark.usefixtures("task_identity")


class FakeGrid:
    """Answers every message of the nodes in ``answers`` at once; a pull that would return a
    reply of a node in ``stalled`` blocks until ``release`` is set, as Flower's pull of a
    half-uploaded reply does until the upload session expires."""

    def __init__(self, online: list[int], answers: dict[int, RecordDict], stalled: tuple[int, ...] = ()) -> None:
        self.online, self.answers, self.stalled = online, answers, stalled
        self.release = threading.Event()
        self.sent: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.online)

    def push_messages(self, messages):
        ids = []
        for n, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{len(self.sent)}-{n}"
            self.sent[message.metadata.message_id] = message
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        wanted = [self.sent[i] for i in message_ids]
        if any(m.metadata.dst_node_id in self.stalled for m in wanted):
            self.release.wait()
        return [Message(self.answers[m.metadata.dst_node_id], reply_to=m) for m in wanted
                if m.metadata.dst_node_id in self.answers]


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
