"""``fedfms bench step`` on the tiny SAM: it runs, interleaves and prints its figures (no timing asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedfms.benchmarks.reference import reference_model
from fedfms.benchmarks.step import REFERENCE, bench_config, step_config
from fedfms.cli import app
from fedfms.models import build_model


def test_reference_has_the_trainable_set_of_the_mode() -> None:
    for mode in ("sam", "msa", "lora", "decoder"):
        cfg = step_config("tiny", mode, 64, 2)
        reference, ours = reference_model(cfg), build_model(cfg, seed=0)
        trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
        head = sum(p.numel() for p in ours.head.parameters())
        assert trainable == sum(p.numel() for p in ours.parameters() if p.requires_grad) - head, mode
        assert reference(torch.rand(2, 3, 64, 64)).shape == (2, 2, 16, 16)


def test_every_variant_gets_a_time_and_a_ratio_each_round() -> None:
    rows = bench_config(step_config("tiny", "msa", 64, 2), ["fedfms", "fedfms-before"], batch_size=2,
                        device=torch.device("cpu"), reps=2, warmup=0)
    assert [r["variant"] for r in rows] == [REFERENCE, "fedfms", "fedfms-before"]
    reference = rows[0]["seconds_each"]
    for row in rows:
        assert len(row["seconds_each"]) == len(row["ratio_each"]) == 2 and all(s > 0 for s in row["seconds_each"])
        # each round's ratio pairs the two steps timed in that round, not medians of all rounds
        assert row["ratio_each"] == pytest.approx([s / r for s, r in zip(row["seconds_each"], reference)])
    assert rows[2]["precision"] == "float32"


def test_command_prints_the_ratio_table(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    result = CliRunner().invoke(app, ["bench", "step", "--backbones", "tiny", "--modes", "sam", "--image-size", "64",
                                      "--reps", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "fedfms / reference" in result.output and "| tiny | sam | fedfms |" in result.output
    assert [r["variant"] for r in json.loads(out.read_text())["rows"]] == [REFERENCE, "fedfms"]
