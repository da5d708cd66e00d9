"""The best round compares like with like: over the clients evaluated in both rounds."""

import torch

from fedfms.config import DataConfig, FederationConfig, RunConfig
from fedfms.run.best import beats
from fedfms.run.log import read_rows
from fedfms.run.tracker import RunTracker


def _eval(round_: int, client: str, dice: float) -> dict:
    return {"kind": "eval", "round": round_, "client": client, "role": "train", "split": "val", "dice": dice,
            "iou": dice, "images": 2}


def test_a_round_that_lost_its_weakest_site_does_not_win_on_a_smaller_mean(tmp_path):
    config = RunConfig(output_dir=tmp_path / "run", data=DataConfig(root=tmp_path), federation=FederationConfig(rounds=3))
    tracker = RunTracker(config, config.output_dir, kind="federated")
    tracker.end_round(1, {"w": torch.ones(1)}, {}, [_eval(1, "A", 0.8), _eval(1, "B", 0.4)], 1.0, [])
    # site B dropped out: A alone scores 0.7, above round 1's mean 0.6 but below A's own 0.8
    tracker.end_round(2, {"w": torch.ones(1)}, {}, [_eval(2, "A", 0.7)], 1.0, ["B (evaluate): gone"])
    assert tracker.best_round == 1  # a mean over all sites would have picked round 2 (0.7 > 0.6)
    tracker.end_round(3, {"w": torch.ones(1)}, {}, [_eval(3, "A", 0.85), _eval(3, "B", 0.5)], 1.0, [])
    assert tracker.best_round == 3
    rounds = {r["round"]: r for r in read_rows(config.output_dir) if r["kind"] == "round"}
    assert rounds[2]["best_compared_on"] == ["A"] and rounds[3]["best_compared_on"] == ["A", "B"]
    results = tracker.finish([], ["x"], {})
    assert "both rounds" in results["best_round_rule"]


def test_the_rule_by_cases():
    assert beats({"A": 0.5}, None) == (True, ["A"])
    assert beats({"A": 0.7}, {"A": 0.8, "B": 0.4}) == (False, ["A"])
    assert beats({"A": 0.9}, {"A": 0.8, "B": 0.4}) == (True, ["A"])
    assert beats({}, {"A": 0.8}) == (False, [])  # every evaluation failed: not the best round
    assert beats({}, {}) == (True, [])  # no validation data at all: the newest round
    assert beats({"A": 0.1}, {"B": 0.9}) == (False, [])  # nothing in common: the best round stays
