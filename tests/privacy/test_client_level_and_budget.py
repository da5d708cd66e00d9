"""Client-level DP through Flower's server-side fixed clipping and RDP accountant, and the run's
budget: each site's update clipped, noise of the calibrated size, epsilon as Flower's accountant
computes it, kept across a resume, and the stop before a round that would overspend."""

import sys
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import RdpAccountant
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

from fedfms.config import DataConfig, PrivacyConfig, RunConfig
from fedfms.federated import protocol as P
from fedfms.federated.exchange import exchange
from fedfms.federated.server import Node, _train_round
from fedfms.federated.strategy import make_strategy, train_content
from fedfms.federated.wire import from_record, record_shapes, to_record
from fedfms.privacy.budget import BudgetError, RunPrivacy
from fedfms.run.tracker import RESUME_DEPLOYMENT

sys.path.insert(0, str(Path(__file__).parents[1] / "federated"))
from fake_grid import FakeGrid  # noqa: E402

pytestmark = pytest.mark.usefixtures("task_identity")
SIZE = 30_000


def _config(**privacy) -> RunConfig:
    return RunConfig(data=DataConfig(clients=["A", "B", "C", "U"], unseen="U"),
                     privacy=PrivacyConfig(level="client", **privacy))


def _round(privacy: RunPrivacy, updates: list[torch.Tensor], round_: int = 1) -> torch.Tensor:
    """One round of the wrapped strategy over three sites that send ``updates`` (from 0)."""
    strategy = privacy.wrap(make_strategy(_config().federation, 3, weighted_by_key=P.UNIFORM_WEIGHT), 3)
    answers = {i + 1: RecordDict({P.ARRAYS: to_record({"w": u}), P.METRICS: MetricRecord(
        {P.NUM_EXAMPLES: 10 * (i + 1), P.UNIFORM_WEIGHT: 1})}) for i, u in enumerate(updates)}
    grid = FakeGrid([1, 2, 3], answers)
    arrays = to_record({"w": torch.zeros(SIZE)})
    content = train_content(strategy, round_, arrays, ConfigRecord({}))  # as the server addresses them
    replies = exchange(grid, [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in (1, 2, 3)],
                       timeout=5)
    aggregated, _ = strategy.aggregate_train(round_, [reply for _, reply in replies])
    return from_record(aggregated)["w"]


def test_each_site_is_clipped_the_sites_weigh_equally_and_noise_has_the_calibrated_size(tmp_path):
    direction = torch.ones(SIZE) / SIZE ** 0.5
    updates = [100 * direction, 3 * direction, 0.1 * direction]  # clipped to 0.5, 0.5 and 0.1
    quiet = _round(RunPrivacy(_config(noise_multiplier=1e-9, max_grad_norm=0.5), tmp_path / "q", False), updates)
    assert torch.allclose(quiet, (0.5 + 0.5 + 0.1) / 3 * direction, atol=1e-6)  # not weighted by samples
    noisy = _round(RunPrivacy(_config(noise_multiplier=2.0, max_grad_norm=0.5), tmp_path / "n", False), updates)
    assert (noisy - quiet).std().item() == pytest.approx(2.0 * 0.5 / 3, rel=0.05)  # sigma * C / sites


def _one_event_epsilon(noise: float) -> float:
    reference = RdpAccountant(RunPrivacy(_config(), Path("unused"), False).wrap(
        make_strategy(_config().federation, 3, weighted_by_key=P.UNIFORM_WEIGHT), 3).accountant.config)
    reference.compose(GaussianPrivacyEvent(noise_multiplier=noise, sample_size=3, population_size=3))
    return reference.get_epsilon(1e-5)


def test_epsilon_is_flowers_accountant_and_a_resume_keeps_it(tmp_path):
    config = _config(noise_multiplier=1.5, max_grad_norm=1.0)
    privacy = RunPrivacy(config, tmp_path, resume=False)
    _round(privacy, [torch.full((SIZE,), 1e-3)] * 3)
    privacy.save()
    assert privacy.epsilon() == pytest.approx(_one_event_epsilon(1.5), rel=1e-9) and privacy.epsilon() > 0
    resumed = RunPrivacy(config, tmp_path, resume=True)
    resumed.wrap(make_strategy(config.federation, 3, weighted_by_key=P.UNIFORM_WEIGHT), 3)
    assert resumed.epsilon() == pytest.approx(privacy.epsilon(), rel=1e-12)


def test_the_budget_stops_before_the_round_that_would_overspend(tmp_path, caplog):
    one_round = _one_event_epsilon(1.5)
    privacy = RunPrivacy(_config(noise_multiplier=1.5, target_epsilon=1.2 * one_round), tmp_path, False)
    _round(privacy, [torch.full((SIZE,), 1e-3)] * 3)
    assert privacy.next_round_allowed(["A", "B", "C"], 2) is False and privacy.stopped_by_budget
    assert "privacy budget: stopped before round 2" in caplog.text
    assert privacy.summary()["stopped_by_budget"] is True

    tight = RunPrivacy(_config(noise_multiplier=1.5, target_epsilon=0.5 * one_round), tmp_path, False)
    tight.wrap(make_strategy(_config().federation, 3, weighted_by_key=P.UNIFORM_WEIGHT), 3)
    with pytest.raises(BudgetError, match="allows no round"):
        tight.next_round_allowed(["A", "B", "C"], 1)


def test_record_level_budget_uses_each_sites_own_projection(tmp_path):
    config = RunConfig(data=DataConfig(clients=["A", "B"]),
                       privacy=PrivacyConfig(level="record", target_epsilon=2.0))
    privacy = RunPrivacy(config, tmp_path, False)
    privacy.heard("A", {"epsilon": 1.0, "epsilon-next": 1.6})
    privacy.heard("B", {"epsilon": 1.2, "epsilon-next": 1.9})
    assert privacy.next_round_allowed(["A", "B"], 2) and privacy.epsilon() == 1.2
    privacy.heard("B", {"epsilon": 1.9, "epsilon-next": 2.4})
    assert not privacy.next_round_allowed(["A", "B"], 3)


def test_a_site_that_sent_the_model_back_unchanged_is_named_and_left_out_of_the_clipping(tmp_path):
    """Flower's clipping divides by each update's norm: an update of norm 0 raised ZeroDivisionError
    in the middle of the server's round."""
    config = _config(noise_multiplier=1e-9, max_grad_norm=0.5)
    strategy = RunPrivacy(config, tmp_path, False).wrap(make_strategy(config.federation, 3,
                                                                      weighted_by_key=P.UNIFORM_WEIGHT), 3)
    nodes = [Node(i, client, 4, 1, 5, ["x"]) for i, client in enumerate("ABC", start=1)]
    arrays = to_record({"w": torch.zeros(SIZE)})
    direction = torch.ones(SIZE) / SIZE ** 0.5
    sent = {"A": torch.zeros(SIZE), "B": 0.8 * direction, "C": 0.2 * direction}
    answers = {n.node_id: RecordDict({P.ARRAYS: to_record({"w": sent[n.client]}), P.METRICS: MetricRecord(
        {P.NUM_EXAMPLES: 4, P.UNIFORM_WEIGHT: 1, "train-loss": 0.5, "train-loss-per-epoch": [0.5],
         "train-seconds": 0.1})}) for n in nodes}
    valid, rows, failed, _ = _train_round(FakeGrid([1, 2, 3], answers), strategy, nodes,
                                          {n.node_id: n for n in nodes}, arrays, record_shapes(arrays), config,
                                          1, 2, RESUME_DEPLOYMENT)
    assert [node.client for node, _ in valid] == ["B", "C"] and [r["client"] for r in rows] == ["B", "C"]
    assert failed == ["A (train): update rejected: it left the model unchanged, and client-level DP cannot clip "
                      "an update of norm 0"]
    # Flower's accounting aggregates only complete rounds: the server then stops naming these failures
    assert strategy.aggregate_train(1, [reply for _, reply in valid]) == (None, None)
