import logging

import pytest
import torch

from fedfms.config import DataConfig, FederationConfig, RunConfig
from fedfms.run.log import RunLogError, read_rows
from fedfms.run.state import ResumeError, RoundState, load_best, load_latest, save_round
from fedfms.run.tracker import RESUME_DEPLOYMENT, RunTracker


def _config(tmp_path, rounds=3, lr=1e-4):
    return RunConfig(output_dir=tmp_path / "run", data=DataConfig(root=tmp_path), federation=FederationConfig(rounds=rounds),
                     train={"lr": lr})


def test_latest_and_best_round_are_kept_and_older_rounds_dropped(tmp_path):
    for r in (1, 2, 3):
        save_round(tmp_path, {"w": torch.full((2,), float(r))}, {"m_t/w": torch.zeros(2)}, RoundState(round=r),
                   is_best=r == 2)
    trainable, strategy, state = load_latest(tmp_path)
    assert state.round == 3 and trainable["w"].tolist() == [3.0, 3.0] and "m_t/w" in strategy
    best, best_state = load_best(tmp_path)
    assert best_state.round == 2 and best["w"].tolist() == [2.0, 2.0]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["LATEST", "best", "round-0003"]


def test_failed_write_leaves_previous_checkpoint_usable(tmp_path):
    save_round(tmp_path, {"w": torch.ones(2)}, {}, RoundState(round=1), is_best=True)
    with pytest.raises(AttributeError):  # fails inside the write, after the temporary folder exists
        save_round(tmp_path, {"w": "not a tensor"}, {}, RoundState(round=2), is_best=False)
    _, _, state = load_latest(tmp_path)
    assert state.round == 1
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ResumeError, match="no complete round"):
        load_latest(tmp_path)


def test_tracker_refuses_to_overwrite_and_to_resume_with_another_config(tmp_path):
    config = _config(tmp_path)
    tracker = RunTracker(config, config.output_dir, kind="centralized")
    rows = [{"kind": "eval", "round": 1, "client": "a", "role": "train", "split": "val", "dice": 0.5, "iou": 0.4,
             "images": 3}]
    tracker.end_round(1, {"w": torch.ones(1)}, {}, rows, 100.0, [])
    with pytest.raises(ResumeError, match="--resume"):
        RunTracker(config, config.output_dir, kind="centralized")
    with pytest.raises(ResumeError, match="resume=true in flwr run's --run-config"):  # a deployment's words
        RunTracker(config, config.output_dir, kind="centralized", resume_hint=RESUME_DEPLOYMENT)
    with pytest.raises(ResumeError, match="configuration differs"):
        RunTracker(_config(tmp_path, lr=1e-3), config.output_dir, kind="centralized", resume=True)
    resumed = RunTracker(_config(tmp_path, rounds=5), config.output_dir, kind="centralized", resume=True)
    assert resumed.first_round == 2 and resumed.best_round == 1 and resumed.best_score == 0.5
    final = [{**rows[0], "dice_per_class": [0.5], "iou_per_class": [0.4]}]
    assert resumed.finish(final, ["organ"], {})["seconds"] >= 100.0  # the first session's round counts too


def test_atomic_writes_leave_no_temporary_and_follow_the_umask(tmp_path):
    import os

    from fedfms.io import atomic_write, atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        atomic_write(tmp_path / "b.bin", lambda stream: stream.write(b"\x00\x01"))
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").read_text() == "{}" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o644}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]

    def fail(stream):
        stream.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.json", fail)
    assert (tmp_path / "a.json").read_text() == "{}" and len(list(tmp_path.iterdir())) == 2


def _two_rounds(tmp_path):
    config = _config(tmp_path, rounds=3)
    tracker = RunTracker(config, config.output_dir, kind="centralized")
    for round_, dice in ((1, 0.6), (2, 0.5)):  # round 1 stays the best
        rows = [{"kind": "eval", "round": round_, "client": "a", "role": "train", "split": "val", "dice": dice,
                 "iou": 0.4, "images": 3}]
        tracker.end_round(round_, {"w": torch.full((1,), float(round_))}, {}, rows, 1.0, [])
    return config


def test_a_damaged_latest_round_falls_back_to_the_best_round(tmp_path):
    config = _two_rounds(tmp_path)
    latest = config.output_dir / "checkpoints" / "round-0002" / "trainable.safetensors"
    latest.write_bytes(latest.read_bytes()[:20])  # truncated
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("fedfms").addHandler(handler)
    try:
        trainable, _, state = load_latest(config.output_dir)
    finally:
        logging.getLogger("fedfms").removeHandler(handler)
    assert state.round == 1 and trainable["w"].item() == 1.0
    assert any("round-0002" in w and "discarded" in w for w in warnings)
    resumed = RunTracker(config, config.output_dir, kind="centralized", resume=True)
    assert resumed.first_round == 2  # round 2 is trained again


def test_a_torn_last_log_line_and_a_kill_inside_the_best_swap_are_recovered(tmp_path):
    config = _two_rounds(tmp_path)
    metrics = config.output_dir / "metrics.jsonl"
    with metrics.open("a") as handle:
        handle.write('{"kind": "eval", "rou')  # killed while appending
    assert [r["round"] for r in read_rows(config.output_dir) if r["kind"] == "round"] == [1, 2]
    root = config.output_dir / "checkpoints"
    (root / "best").rename(root / ".best-old")  # killed between the two renames of the best swap
    trainable, state = load_best(config.output_dir)
    assert state.round == 1 and trainable["w"].item() == 1.0
    metrics.write_text('{"kind": "round", "round": 1}\nnot json\n{"kind": "round", "round": 2}\n')
    with pytest.raises(RunLogError, match="line 2"):
        read_rows(config.output_dir)
