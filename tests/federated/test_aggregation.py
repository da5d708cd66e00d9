"""Server-side aggregation and update screening, on real Flower messages."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedfms.config import FederationConfig
from fedfms.federated.server import Node, _screen, _screen_norms
from fedfms.federated.strategy import make_strategy, restore_strategy_tensors, strategy_tensors, train_content
from fedfms.federated.wire import (
    UpdateRejected,
    check_update,
    decode_update,
    encode_update,
    from_record,
    record_shapes,
    to_record,
)

pytestmark = pytest.mark.usefixtures("task_identity")


def _reply(state: dict[str, torch.Tensor], num_examples: int, node: int) -> Message:
    request = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": to_record(state), "metrics": MetricRecord({"num-examples": num_examples})})
    return Message(content, reply_to=request)


def test_fedavg_equals_sample_weighted_mean():
    updates = [({"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}, 10),
               ({"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([1.0])}, 30),
               ({"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([5.0])}, 7)]
    strategy = make_strategy(FederationConfig(), min_train_nodes=3)
    arrays, _ = strategy.aggregate_train(1, [_reply(s, n, i + 1) for i, (s, n) in enumerate(updates)])
    total = sum(n for _, n in updates)
    for name in ("w", "b"):
        expected = sum(s[name] * n for s, n in updates) / total
        assert torch.allclose(from_record(arrays)[name], expected, atol=1e-6)
    # weights are exact fractions, not the reference's 2-decimal rounding (10/47 -> 0.21)
    rounded = sum(s["w"] * round(n / total, 2) for s, n in updates)
    assert not torch.allclose(from_record(arrays)["w"], rounded, atol=1e-4)


def test_fedadam_moments_survive_a_save_and_restore():
    strategy = make_strategy(FederationConfig(strategy="fedadam"), min_train_nodes=1)
    strategy.current_arrays = {"w": np.zeros(2, dtype=np.float32)}
    strategy.aggregate_train(1, [_reply({"w": torch.tensor([1.0, -1.0])}, 5, 1)])
    saved = strategy_tensors(strategy)
    assert set(saved) == {"m_t/w", "v_t/w"}
    fresh = make_strategy(FederationConfig(strategy="fedadam"), min_train_nodes=1)
    restore_strategy_tensors(fresh, saved)
    assert np.array_equal(fresh.m_t["w"], strategy.m_t["w"]) and np.array_equal(fresh.v_t["w"], strategy.v_t["w"])


def test_fedprox_sends_mu_to_clients():
    strategy = make_strategy(FederationConfig(strategy="fedprox", proximal_mu=0.05), min_train_nodes=3)
    content = train_content(strategy, 1, to_record({"w": torch.zeros(1)}), ConfigRecord({}))
    assert content["config"]["proximal-mu"] == pytest.approx(0.05) and content["config"]["server-round"] == 1


def test_update_with_nan_wrong_shape_or_names_is_rejected():
    shapes = record_shapes(to_record({"w": torch.zeros(2, 3)}))
    check_update(to_record({"w": torch.ones(2, 3)}), shapes)
    with pytest.raises(UpdateRejected, match="'w' contains NaN"):
        check_update(to_record({"w": torch.full((2, 3), float("nan"))}), shapes)
    with pytest.raises(UpdateRejected, match=r"'w' has shape \(3, 2\)"):
        check_update(to_record({"w": torch.ones(3, 2)}), shapes)
    with pytest.raises(UpdateRejected, match="missing \\['w'\\]"):
        check_update(to_record({"v": torch.ones(2, 3)}), shapes)


def test_record_round_trip_is_exact():
    state = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    back = from_record(to_record(state))
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert isinstance(to_record(state), ArrayRecord)


def test_screen_names_the_client_of_a_nan_or_misshapen_update_and_keeps_the_others():
    shapes = {"w": (2,)}
    nodes = {1: Node(1, "good", 4, 1, 5, ["x"]), 2: Node(2, "nan-site", 4, 1, 5, ["x"]),
             3: Node(3, "shape-site", 4, 1, 5, ["x"])}
    replies = [(1, _reply({"w": torch.ones(2)}, 4, 1)), (2, _reply({"w": torch.tensor([1.0, float("inf")])}, 4, 2)),
               (3, _reply({"w": torch.ones(3)}, 4, 3))]
    valid, failed = _screen(replies, nodes, shapes)
    assert [node.client for node, _ in valid] == ["good"]
    assert any(f.startswith("nan-site (train): update rejected") and "NaN or Inf" in f for f in failed)
    assert any(f.startswith("shape-site (train): update rejected") and "shape (3,)" in f for f in failed)


def test_delta_fp16_update_halves_the_bytes_and_decodes_to_the_local_weights():
    torch.manual_seed(0)
    start = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    local = {k: v + 1e-3 * torch.randn_like(v) for k, v in start.items()}  # a fine-tuning step
    full, delta = encode_update(local, start, "full"), encode_update(local, start, "delta-fp16")
    assert delta.count_bytes() < 0.52 * full.count_bytes()
    decoded = from_record(decode_update(delta, to_record(start), "delta-fp16"))
    for k in local:
        torch.testing.assert_close(decoded[k], local[k], rtol=0, atol=1e-6)  # fp16 of the weights: ~1e-3
    assert not torch.allclose(local["w"].half().float(), local["w"], rtol=0, atol=1e-6)


def test_an_update_far_beyond_the_rounds_median_is_rejected_and_named():
    global_arrays = to_record({"w": torch.zeros(4)})
    nodes = [Node(1, "A", 4, 1, 5, ["x"]), Node(2, "B", 4, 1, 5, ["x"]), Node(3, "huge", 4, 1, 5, ["x"])]
    moves = {1: 0.1, 2: 0.2, 3: 3e37}
    valid = [(n, _reply({"w": torch.full((4,), moves[n.node_id])}, 5, n.node_id)) for n in nodes]
    failed = []
    kept = _screen_norms(valid, global_arrays, 10.0, failed)
    assert [n.client for n, _ in kept] == ["A", "B"]
    assert len(failed) == 1 and failed[0].startswith("huge (train): update rejected") and "max_update_ratio" in failed[0]
    two = _screen_norms(valid[1:], global_arrays, 10.0, [])  # two sites: the lower median still catches it
    assert [n.client for n, _ in two] == ["B"]
    assert _screen_norms(valid, global_arrays, None, []) == valid  # the screen can be turned off


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_robust_strategies_resist_one_outlier(name):
    updates = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([1.2])}, {"w": torch.tensor([0.8])},
               {"w": torch.tensor([1.1])}, {"w": torch.tensor([1000.0])}]
    strategy = make_strategy(FederationConfig(strategy=name, trimmed_beta=0.2), min_train_nodes=5)
    arrays, _ = strategy.aggregate_train(1, [_reply(s, 5, i + 1) for i, s in enumerate(updates)])
    assert 0.8 <= from_record(arrays)["w"].item() <= 1.2  # FedAvg would give 200.8
