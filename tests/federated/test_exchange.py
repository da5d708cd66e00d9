"""The server's side of a round against a fake Grid: the round's deadline holds even when a
pull blocks (a site that died mid-upload), and a restarted site takes its place again."""

import time

import pytest
import torch
from fake_grid import FakeGrid
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedfms.config import DataConfig, FederationConfig, RunConfig
from fedfms.federated import protocol as P
from fedfms.federated.exchange import exchange
from fedfms.federated.server import FederationError, Node, _train_round, rejoin
from fedfms.federated.strategy import make_strategy
from fedfms.federated.wire import from_record, record_shapes, to_record
from fedfms.run.tracker import RESUME_DEPLOYMENT

pytestmark = pytest.mark.usefixtures("task_identity")


def _query(node: int) -> Message:
    return Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY)


@pytest.mark.timeout(30)
def test_the_timeout_holds_while_a_pull_is_blocked_by_a_half_uploaded_reply():
    grid = FakeGrid([1, 2], {1: RecordDict(), 2: RecordDict()}, stalled=(2,))
    start = time.monotonic()
    replies = exchange(grid, [_query(1), _query(2)], timeout=1.0)
    assert time.monotonic() - start < 2.0
    grid.release.set()
    assert replies == []  # the blocked pull carried both replies: none arrived in time


@pytest.mark.timeout(30)
def test_replies_are_paired_with_their_destination_and_missing_nodes_left_out():
    def says(who: str) -> RecordDict:
        return RecordDict({P.INFO: ConfigRecord({"client": who})})

    grid = FakeGrid([1, 2, 3, 4], {1: says("one"), 3: says("three"), 4: says("four")})
    replies = exchange(grid, [_query(4), _query(2), _query(3), _query(1)], timeout=1.0)
    assert [(node, str(reply.content[P.INFO]["client"])) for node, reply in replies] == \
        [(4, "four"), (3, "three"), (1, "one")]  # each reply with its own node, in the messages' order


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


def _round(grid: FakeGrid, nodes: list[Node], config: RunConfig, min_train: int, strategy=None):
    arrays = to_record({"w": torch.zeros(2)})
    return _train_round(grid, strategy or make_strategy(config.federation, min_train), nodes,
                        {n.node_id: n for n in nodes}, arrays, record_shapes(arrays), config, 1, min_train,
                        RESUME_DEPLOYMENT)


def _trained(value: float) -> RecordDict:
    return RecordDict({P.ARRAYS: to_record({"w": torch.full((2,), value)}), P.METRICS: MetricRecord(
        {P.NUM_EXAMPLES: 4, "train-loss": 0.5, "train-loss-per-epoch": [0.5], "train-seconds": 0.1})})


@pytest.mark.timeout(30)
def test_a_round_with_most_sites_offline_stops_at_once_instead_of_waiting_for_them():
    """Flower's node sampling sleeps until enough nodes are online, with no deadline."""
    nodes = [Node(i, c, 4, 1, 5, ["x"], "d") for i, c in enumerate("ABCD", start=1)]
    config = RunConfig(data=DataConfig(clients=list("ABCD")), federation=FederationConfig(round_timeout_s=600))
    grid = FakeGrid([1], {n.node_id: _trained(1.0) for n in nodes})  # B, C, D offline
    start = time.monotonic()
    with pytest.raises(FederationError, match=r"round 1: 1 training clients connected, 2 required; failures: "
                                              r"B \(train\): not connected; C .*resume=true"):
        _round(grid, nodes, config, min_train=2)
    assert time.monotonic() - start < 5 and grid.sent == {}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg"])
def test_a_round_goes_on_without_an_offline_site_and_the_strategy_configures_its_messages(strategy):
    nodes = [Node(i, c, 4, 1, 5, ["x"], "d") for i, c in enumerate("ABC", start=1)]
    config = RunConfig(data=DataConfig(clients=list("ABC")),
                       federation=FederationConfig(strategy=strategy, proximal_mu=0.25, round_timeout_s=600))
    grid = FakeGrid([1, 3], {n.node_id: _trained(n.node_id) for n in nodes})  # B offline
    aggregator = make_strategy(config.federation, 2)
    start = time.monotonic()
    valid, rows, failed, silent = _round(grid, nodes, config, 2, aggregator)
    assert time.monotonic() - start < 5  # the offline site costs no timeout
    assert [n.client for n, _ in valid] == ["A", "C"] and failed == ["B (train): not connected"] and silent == {2}
    sent = list(grid.sent.values())
    assert [m.metadata.dst_node_id for m in sent] == [1, 3] and {m.metadata.message_type for m in sent} == {"train"}
    assert all(m.content[P.CONFIG]["server-round"] == 1 for m in sent)
    assert [m.content[P.CONFIG].get("proximal-mu") for m in sent] == [0.25, 0.25] if strategy == "fedprox" else \
        all("proximal-mu" not in m.content[P.CONFIG] for m in sent)
    aggregated, _ = aggregator.aggregate_train(1, [reply for _, reply in valid])  # FedAdam steps from the arrays sent
    assert torch.all(from_record(aggregated)["w"] > 0)
