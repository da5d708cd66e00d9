"""The demo end to end at a toy size: pretrained LiteMedSAM federated, centralized and from
random initialisation; table, results.json, report and PNG plots."""

import json

import pytest
from PIL import Image

from fedfms.experiments.demo import demo_rows, demo_settings, run_demo
from fedfms.models.litemedsam import LiteMedSamSegmenter


def test_demo_rows_compare_pretrained_with_random_init_and_tiny_falls_back_to_random_rows():
    assert demo_rows(demo_settings(), pretrained=True) == ["FedDecoder", "Decoder", "FedDecoder-PT"]
    assert demo_rows(demo_settings("litemedsam", mode="msa"), pretrained=True) == ["FedMSA", "MSA", "FedMSA-PT"]
    assert demo_rows(demo_settings("tiny"), pretrained=False) == ["FedMSA-PT", "MSA-PT", "FedSAM-PT", "SAM-PT"]


@pytest.mark.slow
def test_demo_writes_table_results_report_and_plots(tmp_path, monkeypatch):
    settings = demo_settings(rounds=1, clients=3, samples_per_client=(2, 2, 2))
    run_demo(tmp_path, settings=settings)
    results = json.loads((tmp_path / "results.json").read_text())
    rows = ["FedDecoder", "Decoder", "FedDecoder-PT"]
    assert list(results) == rows
    assert all(set(r["clients"]) == {"site-A", "site-B", "site-C"} for r in results.values())
    assert [r["kind"] for r in results.values()] == ["federated", "centralized", "federated"]
    assert [r["model"]["pretrained"] for r in results.values()] == [True, True, False]
    assert all(r["model"]["backbone"] == "litemedsam" for r in results.values())
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {row} |" in table for row in rows) and "site-C* Dice" in table
    for png in ("dice_per_round.png", "overlays.png"):
        with Image.open(tmp_path / png) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    report = (tmp_path / "report.md").read_text()
    assert "![Dice per round](dice_per_round.png)" in report and "random init" in report
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2 * 6  # pretrained and random encoders
    first = (tmp_path / "runs" / "FedDecoder" / "site-C" / "results.json").stat().st_mtime
    overlays = (tmp_path / "overlays.png").read_bytes()

    def no_encoder(self, images):
        raise AssertionError("the image encoder ran again")

    monkeypatch.setattr(LiteMedSamSegmenter, "embed", no_encoder)
    run_demo(tmp_path, settings=settings)  # finished runs reused, the report drawn from the cached embeddings
    assert (tmp_path / "runs" / "FedDecoder" / "site-C" / "results.json").stat().st_mtime == first
    assert (tmp_path / "overlays.png").read_bytes() == overlays
