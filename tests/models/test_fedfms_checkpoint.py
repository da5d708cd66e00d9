"""fedfms checkpoints: exact round trip, rebuild from the folder alone, atomic replace, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedfms.models import (
    CheckpointError,
    build_model,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
    trainable_state,
)


def _perturb(model: torch.nn.Module) -> None:
    """Move every trainable tensor away from its initial value (as training would)."""
    with torch.no_grad():
        for p in trainable_state(model).values():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("mode", ["sam", "msa", "lora"])
def test_round_trip_gives_identical_logits(
    tmp_path: Path, tiny_cfg, tiny_images, mode: str
) -> None:
    cfg = tiny_cfg(mode=mode, num_classes=2, lora_rank=2)
    model = build_model(cfg).eval()
    _perturb(model)
    save_checkpoint(tmp_path / "global", model, cfg, metadata={"round": "7"})

    loaded, loaded_cfg = load_checkpoint(tmp_path / "global")
    assert loaded_cfg == cfg.model_copy(update={"checkpoint": tmp_path / "global"})
    assert loaded.training
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == set(
        trainable_state(model)
    )
    with torch.no_grad():
        assert torch.equal(loaded.eval()(tiny_images), model(tiny_images))
    assert read_checkpoint_config(tmp_path / "global")[1] == {"round": "7"}


def test_build_model_continues_from_a_fedfms_checkpoint(
    tmp_path: Path, tiny_cfg, tiny_images
) -> None:
    cfg = tiny_cfg(mode="msa")
    model = build_model(cfg).eval()
    _perturb(model)
    save_checkpoint(tmp_path / "ckpt", model, cfg)
    resumed = build_model(cfg.model_copy(update={"checkpoint": tmp_path / "ckpt"})).eval()
    with torch.no_grad():
        assert torch.equal(resumed(tiny_images), model(tiny_images))


def test_checkpoint_of_another_model_is_refused(tmp_path: Path, tiny_cfg) -> None:
    cfg = tiny_cfg(mode="msa")
    save_checkpoint(tmp_path / "ckpt", build_model(cfg), cfg)
    other = cfg.model_copy(
        update={"backbone": "vit_b", "num_classes": 3, "checkpoint": tmp_path / "ckpt"}
    )
    pattern = (
        r"ckpt/fedfms_model\.json: .*backbone: 'tiny' in the checkpoint, 'vit_b' asked; num_classes"
    )
    with pytest.raises(CheckpointError, match=pattern):
        build_model(other)


def test_tensor_file_must_match_its_description(tmp_path: Path, tiny_cfg) -> None:
    save_checkpoint(
        tmp_path / "ckpt", build_model(tiny_cfg(num_classes=2)), tiny_cfg(num_classes=2)
    )
    description = json.loads((tmp_path / "ckpt" / "fedfms_model.json").read_text())
    (tmp_path / "ckpt" / "fedfms_model.json").write_text(
        json.dumps(description | {"num_classes": 1})
    )
    del description["sha256"]
    with pytest.raises(
        CheckpointError, match=r"ckpt/model\.safetensors: .*head\.weight: \(2, 4, 1, 1\)"
    ):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"ckpt/model\.safetensors: the file is damaged: its SHA-256 differs"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "fedfms_model.json").write_text(json.dumps(description))  # without its digest
    with pytest.raises(CheckpointError, match=r"ckpt/model\.safetensors: cannot read"):
        load_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "fedfms_model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"fedfms_model\.json: not a readable"):
        load_checkpoint(tmp_path / "ckpt")


def test_saving_replaces_an_existing_checkpoint_atomically(
    tmp_path: Path, tiny_cfg, tiny_images
) -> None:
    cfg = tiny_cfg()
    first, second = build_model(cfg).eval(), build_model(cfg).eval()
    save_checkpoint(tmp_path / "latest", first, cfg)
    save_checkpoint(tmp_path / "latest", second, cfg, metadata={"round": "2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == [
        "fedfms_model.json",
        "model.safetensors",
    ]
    loaded, _ = load_checkpoint(tmp_path / "latest")
    with torch.no_grad():
        assert torch.equal(loaded.eval()(tiny_images), second(tiny_images))
