"""The demo end to end at a toy size: four runs, table, results.json, report and PNG plots."""

import json

import pytest
from PIL import Image

from fedfms.experiments.demo import DEMO_RUNS, DemoSettings, run_demo

pytestmark = pytest.mark.slow


def test_demo_writes_table_results_report_and_plots(tmp_path):
    settings = DemoSettings(rounds=1, image_size=64, clients=3, samples_per_client=(8, 8, 8))
    run_demo(tmp_path, settings=settings)
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == [r.label for r in DEMO_RUNS]
    assert all(set(r["clients"]) == {"site-A", "site-B", "site-C"} for r in results.values())
    assert {r["kind"] for r in results.values()} == {"federated", "centralized"}
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {r.label} |" in table for r in DEMO_RUNS) and "site-C* Dice" in table
    for png in ("dice_per_round.png", "overlays.png"):
        with Image.open(tmp_path / png) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    assert "![Dice per round](dice_per_round.png)" in (tmp_path / "report.md").read_text()
    first = (tmp_path / "runs" / "FedMSA" / "results.json").stat().st_mtime
    run_demo(tmp_path, settings=settings)  # finished runs are reused, not retrained
    assert (tmp_path / "runs" / "FedMSA" / "results.json").stat().st_mtime == first
