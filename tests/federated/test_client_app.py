"""The real ClientApp answering real Flower messages, as a SuperNode would call it, with the
handlers in this process (``site-worker=false``; the warm worker is tested in test_worker.py)."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedfms.errors import FedfmsError
from fedfms.federated import protocol as P
from fedfms.federated.client_app import app
from fedfms.federated.packing import unpack_arrays
from fedfms.federated.protocol import SiteFailure
from fedfms.federated.wire import from_record, to_record
from fedfms.models import build_model, trainable_state
from fedfms.train import rounds
from fedfms.train.optimizer import kept_state, local_optimizer

pytestmark = pytest.mark.usefixtures("task_identity")


def _send(kind: str, config, data_dir, arrays: ArrayRecord | None = None, round_: int = 1, **node) -> Message:
    content = RecordDict({P.CONFIG: ConfigRecord({P.RUN_CONFIG: config.model_dump_json(), "server-round": round_})})
    if arrays is not None:
        content[P.ARRAYS] = arrays
    node_config = {"data-dir": str(data_dir), "site-worker": False, **node}
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})
    reply = app(Message(content, dst_node_id=5, message_type=kind), context)
    unpack_arrays(reply.content)  # as the server's exchange does
    return reply


def test_train_reply_carries_only_the_trainable_tensors_and_counts(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run").with_overrides({"train.local_epochs": 2})
    torch.manual_seed(0)
    model = build_model(config.model)
    sent = trainable_state(model)
    reply = _send(MessageType.TRAIN, config, federation / "site-A", to_record(sent))
    assert set(reply.content.keys()) == {P.ARRAYS, P.METRICS}
    received = from_record(reply.content[P.ARRAYS])
    assert set(received) == set(sent)
    assert all(received[k].shape == sent[k].shape for k in sent)
    assert any(not torch.equal(received[k], sent[k]) for k in sent), "local training changed nothing"
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen > 0 and reply.content[P.ARRAYS].count_bytes() < 4 * sum(p.numel() for p in model.parameters())
    assert reply.content[P.METRICS][P.NUM_EXAMPLES] == 4  # site-A: 8 samples, 2 cases held out for validation
    metrics = reply.content[P.METRICS]
    assert set(metrics.keys()) == {P.NUM_EXAMPLES, P.UNIFORM_WEIGHT, "train-loss", "train-loss-per-epoch", "train-seconds",
                                   "train-steps"}
    assert len(metrics["train-loss-per-epoch"]) == 2 and metrics["train-loss"] == metrics["train-loss-per-epoch"][-1]
    assert metrics["train-steps"] == 2  # two epochs of one batch of 4


def test_query_describes_the_site_without_data(federation, tmp_path, run_config):
    reply = _send(MessageType.QUERY, run_config(federation, tmp_path / "run"), federation / "site-B")
    info = reply.content[P.INFO]
    assert info["client"] == "site-B" and info["num-samples"] == 8
    assert info["num-train"] + info["num-val"] == 8
    assert len(str(info[P.FROZEN_DIGEST])) == 64
    assert not reply.content.array_records


def test_evaluate_scores_the_unseen_client_on_all_its_data(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run")
    torch.manual_seed(0)
    arrays = to_record(trainable_state(build_model(config.model)))
    unseen = _send(MessageType.EVALUATE, config, federation / "site-C", arrays)
    seen = _send(MessageType.EVALUATE, config, federation / "site-A", arrays)
    assert unseen.content[P.INFO]["split"] == "test" and unseen.content[P.METRICS][P.NUM_EXAMPLES] == 8
    assert seen.content[P.INFO]["split"] == "val" and seen.content[P.METRICS][P.NUM_EXAMPLES] == 4
    assert 0.0 <= unseen.content[P.METRICS]["dice"] <= 1.0
    assert "cases" not in unseen.content[P.METRICS]


def test_evaluate_with_the_case_protocol_reports_how_many_cases_were_scored(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run").with_overrides({"evaluation.protocol": "case"})
    torch.manual_seed(0)
    arrays = to_record(trainable_state(build_model(config.model)))
    metrics = _send(MessageType.EVALUATE, config, federation / "site-C", arrays).content[P.METRICS]
    assert metrics[P.NUM_EXAMPLES] == 8 and metrics["cases"] == 2  # 8 slices of 2 synthetic cases
    assert 0.0 <= metrics["dice"] <= 1.0


def test_a_node_without_data_folder_gets_an_error_naming_it(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run")
    with pytest.raises(FedfmsError, match="nowhere"):
        _send(MessageType.QUERY, config, tmp_path / "nowhere")


def test_kept_optimizer_state_stays_at_the_site_across_rounds_and_a_resume(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run").with_overrides(
        {"train.optimizer_state": "keep", "train.state_dir": str(tmp_path / "state")})
    torch.manual_seed(0)
    start = to_record(trainable_state(build_model(config.model)))
    first = _send(MessageType.TRAIN, config, federation / "site-A", start, round_=1)
    kept = kept_state(config, "site-A")
    after_one = torch.load(kept.path, weights_only=True)
    assert after_one["round"] == 1 and P.ARRAYS in first.content
    assert {s["step"].item() for s in after_one["state"]["state"].values()} == {1.0}
    _send(MessageType.TRAIN, config, federation / "site-A", first.content[P.ARRAYS], round_=2)
    after_two = torch.load(kept.path, weights_only=True)
    assert {s["step"].item() for s in after_two["state"]["state"].values()} == {2.0}  # moments carried on
    resumed = local_optimizer(build_model(config.model), config.train, torch.device("cpu"))
    assert kept.restore(resumed, round_=3)  # a resumed run's next round gets exactly what was saved
    for index, saved in after_two["state"]["state"].items():
        assert torch.equal(resumed.state_dict()["state"][index]["exp_avg"], saved["exp_avg"])
    assert not kept.restore(resumed, round_=2)  # resumed from an earlier round: a fresh optimizer
    assert not list(tmp_path.glob("state/.*"))  # no temporary file left


def test_reset_keeps_no_state(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run")
    assert config.train.optimizer_state == "reset" and kept_state(config, "site-A") is None


def test_a_failing_site_reports_its_name_and_the_kind_of_error_only(federation, tmp_path, run_config, caplog):
    config = run_config(federation, tmp_path / "run")
    torch.manual_seed(0)
    start = to_record(trainable_state(build_model(config.model)))
    corrupt = sorted((federation / "site-A" / "images").iterdir())
    for path in corrupt:
        path.write_bytes(b"not an array")
    with pytest.raises(SiteFailure) as failure:
        _send(MessageType.TRAIN, config, federation / "site-A", start)
    message = str(failure.value)
    assert message.startswith("site-A: ") and "while handling train" in message
    assert str(tmp_path) not in message and not any(p.stem in message for p in corrupt)  # no path, no sample name


def test_the_node_config_device_is_the_one_a_node_trains_on(federation, tmp_path, run_config, monkeypatch):
    """The run says cpu; a node that names its own device trains there (asked of torch through
    ``resolve_device``, recorded here and answered with the CPU this test has)."""
    asked: list[str] = []
    monkeypatch.setattr(rounds, "resolve_device", lambda name, *_: asked.append(name) or torch.device("cpu"))
    config = run_config(federation, tmp_path / "run").with_overrides({"train.device": "cpu"})
    start = to_record(trainable_state(build_model(config.model, seed=0)))
    _send(MessageType.TRAIN, config, federation / "site-A", start, device="cuda:1")
    _send(MessageType.TRAIN, config, federation / "site-A", start)
    assert asked == ["cuda:1", "cpu"]
