"""Parameter accounting (on the meta device) and the ``fedfms models`` command."""

from __future__ import annotations

import pytest

from fedfms.config import ModelConfig
from fedfms.models import build_model, count_parameters
from fedfms.models.accounting import reference_msa_trainable
from fedfms.models.cli import models_command

VIT_B_SAM = 93_735_472  # Meta's SAM ViT-B: encoder 89,670,912 + prompt 6,220 + decoder 4,058,340


def test_vit_b_counts_match_the_paper() -> None:
    sam = count_parameters(ModelConfig(backbone="vit_b", mode="sam"))
    assert sam.total == sam.trainable == VIT_B_SAM + 5  # + Conv2d(4, 1, 1) head
    assert (sam.decoder, sam.prompt_encoder) == (4_058_340, 6_220)
    assert sam.trainable_bytes == 4 * sam.trainable

    msa = count_parameters(ModelConfig(backbone="vit_b", mode="msa"))
    adapters = 12 * 2 * (768 * 192 + 192 + 192 * 768 + 768)
    assert msa.side_branches == adapters == 7_100_928
    assert msa.trainable == adapters + 4_058_340 + 6_220 + 5
    assert msa.total == VIT_B_SAM + adapters + 5
    assert round(reference_msa_trainable(msa) / 1e6, 1) == 14.7  # the paper's FedMSA figure

    lora = count_parameters(ModelConfig(backbone="vit_b", mode="lora", lora_rank=8))
    assert lora.side_branches == 12 * (768 * 8 + 8 * 3 * 768)


@pytest.mark.parametrize("mode", ["sam", "msa", "lora"])
def test_counts_agree_with_a_real_model(tiny_cfg, mode: str) -> None:
    cfg = tiny_cfg(mode=mode, num_classes=2)
    model = build_model(cfg)
    count = count_parameters(cfg)
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_models_command_prints_every_mode(capsys) -> None:
    models_command(backbone="vit_b")
    out = capsys.readouterr().out
    assert "93,735,477" in out and "93.7M" in out
    assert "11,165,493" in out and "14.7M" in out
    assert all(f"\n{mode} " in out for mode in ("sam", "msa", "lora"))


def test_every_column_of_the_models_table_has_a_header_over_it(capsys) -> None:
    models_command(backbone="vit_b")
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[1], lines[2:6]
    assert header.split() == ["mode", "total", "trainable", "rounded", "MB-up/round", "up+down"]
    for row in rows:
        cells = row.split()
        assert len(cells) == len(header.split())
        for name, cell in zip(header.split()[1:], cells[1:]):  # right-aligned under its header
            assert row.index(cell, header.index(name) - 12) + len(cell) == header.index(name) + len(name)
