"""``fedfms efficiency`` (the paper's Table 2) on the tiny SAM: measured figures and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from torch.nn.modules.module import register_module_forward_hook

from fedfms.benchmarks.efficiency import (
    efficiency_command,
    efficiency_markdown,
    measure_efficiency,
    measured_markdown,
    run_efficiency,
)
from fedfms.config import ModelConfig
from fedfms.models import build_model

POSITIVE = (
    "total_params", "learnable_params", "bytes_up_per_round", "bytes_up_down_per_round", "train_step_seconds",
    "round_seconds", "peak_memory_mib", "train_flops_per_image", "predict_seconds_per_image",
)


def _tiny(mode: str) -> ModelConfig:
    return ModelConfig(backbone="tiny", mode=mode, image_size=64, num_classes=2)


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """sam and msa figures of the tiny SAM, batch 2, one timed step, in this process."""
    return {m: measure_efficiency(_tiny(m), batch_size=2, device="cpu", steps=1, predict_images=1) for m in ("sam", "msa")}


def test_figures_are_positive(measured: dict[str, dict]) -> None:
    for result in measured.values():
        for key in POSITIVE:
            assert result[key] > 0, key
        assert result["train_memory_increase_mib"] >= 0


def test_msa_learns_and_sends_less_than_sam(measured: dict[str, dict]) -> None:
    sam, msa = measured["sam"], measured["msa"]
    assert msa["learnable_params"] < sam["learnable_params"] == sam["total_params"]
    assert msa["bytes_up_per_round"] < sam["bytes_up_per_round"]
    # the message carries every learnable fp32 value, plus names and framing
    assert sam["bytes_up_per_round"] >= 4 * sam["learnable_params"]


def test_sam_backward_costs_more_flops_than_msa(measured: dict[str, dict]) -> None:
    # the frozen encoder of msa needs no weight gradients
    assert measured["sam"]["train_flops_per_image"] > measured["msa"]["train_flops_per_image"]


def test_isolated_run_returns_the_figures() -> None:
    (result,) = run_efficiency([_tiny("lora")], isolate=True, progress=lambda _: None,
                               batch_size=1, device="cpu", steps=1, predict_images=1)
    assert result["mode"] == "lora" and result["peak_memory_mib"] > 0 and result["wall_seconds"] > 0


def test_table_puts_the_paper_beside_vit_b_and_names_differences(measured: dict[str, dict]) -> None:
    vit_b = {**measured["msa"], "backbone": "vit_b", "model": "FedMSA (vit_b)", "image_size": 256}
    table = efficiency_markdown([vit_b, measured["sam"]], rounds=100, train_clients=3)
    assert "| FedMSA (paper, A800) | 14.7M |" in table and "739.9" in table and "52,274" in table
    assert "FedSAM (paper" not in table  # the tiny sam row has no paper counterpart
    assert "image_size 256 (paper 1024)" in table and "batch_size 2 (paper 6)" in table


def test_command_writes_json_and_markdown(tmp_path: Path) -> None:
    efficiency_command(backbone="tiny", modes="msa", image_size=64, batch_size=1, device="cpu", steps=1,
                       predict_images=1, samples_per_round=10, isolate=False, out=tmp_path)
    summary = json.loads((tmp_path / "efficiency.json").read_text())
    (result,) = summary["results"]
    assert result["model"] == "FedMSA (tiny)" and result["samples_per_round"] == 10
    assert summary["paper"]["msa"]["training_minutes"] == 739.9
    assert "| FedMSA (tiny) |" in (tmp_path / "efficiency.md").read_text()


@pytest.mark.parametrize("options", [{"modes": "sam,fedavg"}, {"backbone": "vit_x"}, {"arch": "resnet"}])
def test_command_refuses_unknown_choices(tmp_path: Path, options: dict[str, str]) -> None:
    with pytest.raises(typer.BadParameter):
        efficiency_command(**{"backbone": "tiny", "device": "cpu", "out": tmp_path, **options})


@pytest.mark.slow
def test_measured_rounds_report_real_time_bytes_and_memory(tmp_path: Path) -> None:
    (result,) = run_efficiency([_tiny("msa")], isolate=False, progress=lambda _: None, batch_size=2, device="cpu",
                               steps=1, predict_images=1,
                               measured={"rounds": 2, "clients": 2, "samples": 6, "batch_size": 2, "device": "cpu",
                                         "precision": "auto", "workdir": tmp_path})
    assert len(result["round_seconds_each"]) == 2 and result["measured_round_seconds"] > 0
    assert result["download_bytes_per_client"] == result["upload_bytes_per_client"] == result["bytes_up_per_round"]
    assert result["peak_rss_tree_mib"] >= result["peak_rss_process_mib"] > 0 and result["peak_cuda_used_mib"] is None
    assert "Measured s / round" in measured_markdown([result])


def test_decoder_mode_times_steps_on_cached_embeddings_and_the_encoder_once() -> None:
    encoder_class = type(build_model(_tiny("decoder")).image_encoder)
    calls = []
    handle = register_module_forward_hook(lambda module, *_: calls.append(1) if type(module) is encoder_class else None)
    try:
        result = measure_efficiency(_tiny("decoder"), batch_size=2, device="cpu", steps=2, predict_images=1)
    finally:
        handle.remove()
    # 1 embedding batch (4 images), 1 FLOP count, 2 predictions: no training step runs the encoder
    assert len(calls) == 4
    assert result["trained_on"] == "cached embeddings" and result["embedding_seconds_per_image"] > 0
    table = efficiency_markdown([result], rounds=10, train_clients=3)
    total = 3 * (10 * result["round_seconds"] + 669 * result["embedding_seconds_per_image"]) / 60
    assert f"| {total:,.1f} |" in table and "steps train the decoder on cached image embeddings" in table
