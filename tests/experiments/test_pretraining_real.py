"""The point of a foundation model, on real data: a short decoder-mode run of pretrained
LiteMedSAM on real MoNuSeg tiles of two organs beats the same run from random initialisation
on a third organ it never saw."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfms.config import RunConfig
from fedfms.data.prepare import OutputSpec, prepare_monuseg
from fedfms.train.centralized import train_centralized

pytestmark = pytest.mark.slow

CASES = {"breast": 3, "kidney": 3, "liver": 1}  # training organs: 2 cases train, 1 validates
MARGIN = 0.2


@pytest.fixture(scope="module")
def monuseg_sites(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("monuseg")
    for organ, cases in CASES.items():  # each case: four 500 px tiles stored at 256 px
        prepare_monuseg(shared_data / "nuclei-monuseg" / organ, OutputSpec(root, organ, 256, 256, progress=False),
                        tile=500, limit=cases)
    return root


def _run(root: Path, out: Path, pretrained: bool) -> float:
    config = RunConfig.model_validate({
        "name": "pretrained" if pretrained else "random",
        "output_dir": str(out),
        "model": {"backbone": "litemedsam", "mode": "decoder", "pretrained": pretrained},
        "data": {"root": str(root), "unseen": "liver"},
        "train": {"batch_size": 4, "lr": 1e-3, "loss": "dice_bce", "precision": "bf16",
                  "embedding_cache": str(root.parent / "cache")},
        "federation": {"rounds": 8, "evaluate_every": 8},
    })
    return train_centralized(config)["clients"]["liver"]["dice"]


def test_pretrained_litemedsam_beats_random_init_on_an_unseen_organ(monuseg_sites, tmp_path) -> None:
    pretrained = _run(monuseg_sites, tmp_path / "pretrained", pretrained=True)
    random_init = _run(monuseg_sites, tmp_path / "random", pretrained=False)
    print(f"unseen liver Dice: pretrained {pretrained:.3f}, random initialisation {random_init:.3f}")
    assert pretrained > random_init + MARGIN
