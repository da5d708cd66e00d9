"""nnU-Net's network, recipe and inference through fedfms' segmenter contract."""

from __future__ import annotations

import pytest
import torch
from nnunet_cases import synthetic_cases

from fedfms.nnunet.planning import nominal_plan
from fedfms.nnunet.preprocess import preprocess_cases, preprocessed_folder
from fedfms.nnunet.segmenter import NnUNetSegmenter
from fedfms.nnunet.trainer import train_round


def _model(classes: int = 1, side: int = 64) -> NnUNetSegmenter:
    plan = nominal_plan(side, [f"c{i}" for i in range(classes)], gpu_memory_gb=0.05, cases=8)
    return NnUNetSegmenter(plan["plans"], plan["dataset"])


def test_sliding_window_prediction_keeps_the_shape_of_a_non_square_image():
    model = _model().eval()
    assert model.patch_size == (64, 64)
    image = torch.rand(3, 80, 150)  # larger than a patch along one side, not a multiple of the divisor
    logits = model.predict_image(image)
    assert logits.shape == (1, 80, 150) and torch.isfinite(logits).all()
    batch = model(image[None, :, :64, :64].repeat(2, 1, 1, 1))
    assert batch.shape == (2, 1, 64, 64)


def test_one_class_logit_is_the_softmax_foreground_probability():
    model = _model().eval()
    image = torch.rand(3, 64, 64)
    model.network.decoder.deep_supervision = False
    with torch.no_grad():
        heads = model.network(model.normalise(image[None]))[0]
    probability = torch.softmax(heads, 0)[1]
    predicted = torch.sigmoid(model.predict_image(image)[0])
    # nnUNetPredictor accumulates the window's logits in float16
    assert predicted == pytest.approx(probability, abs=0.02)
    assert (predicted - probability).abs().mean() < 2e-3


def test_overlapping_classes_give_one_logit_per_region():
    model = _model(classes=2).eval()
    assert model.class_count == 2
    assert model.predict_image(torch.rand(3, 64, 64)).shape == (2, 64, 64)


def test_paper_recipe_trains_the_network_on_whole_images():
    model = _model().train()
    logits = model(torch.rand(2, 3, 70, 64))
    assert logits.shape == (2, 1, 70, 64)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.network.encoder.parameters())


def test_normalisation_is_nnunets_zscore_per_image_and_channel():
    images = torch.rand(2, 3, 32, 32) * torch.tensor([1.0, 0.5, 0.2])[:, None, None]
    out = model_out = _model().normalise(images)
    assert model_out.shape == images.shape
    assert out.mean(dim=(2, 3)) == pytest.approx(torch.zeros(2, 3), abs=1e-5)
    assert out.std(dim=(2, 3), unbiased=False) == pytest.approx(torch.ones(2, 3), abs=1e-4)


def test_a_local_round_of_nnunets_recipe(tmp_path):
    model = _model()
    cases = [(f"case{i}", data, seg) for i, (data, seg) in enumerate(synthetic_cases(4))]
    preprocess_cases(cases, model.plans, model.dataset, tmp_path, key="v1")
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    result = train_round(model.network, model.plans, model.dataset, tmp_path, epoch=0, total_epochs=2, iterations=2,
                         device=torch.device("cpu"))
    assert result.steps == 2 and result.loss == result.loss
    assert result.supervised_outputs > 1  # deep supervision: the loss is taken at several resolutions
    assert {"SpatialTransform", "MirrorTransform", "GaussianNoiseTransform"} <= set(result.augmentation)
    moved = [k for k, v in model.network.state_dict().items() if not torch.equal(v, before[k])]
    assert any("decoder.seg_layers" in k for k in moved) and any("encoder" in k for k in moved)


def test_preprocessed_cases_are_reused_until_their_source_changes(tmp_path):
    model = _model()
    cases = [(f"case{i}", data, seg) for i, (data, seg) in enumerate(synthetic_cases(2))]
    folder = preprocess_cases(cases, model.plans, model.dataset, tmp_path, key="v1")
    assert folder == preprocessed_folder(tmp_path, model.plans)
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    preprocess_cases(iter(()), model.plans, model.dataset, tmp_path, key="v1")  # nothing read: reused
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp
    preprocess_cases(cases[:1], model.plans, model.dataset, tmp_path, key="v2")
    assert sorted(p.name for p in folder.iterdir()) == ["case0.b2nd", "case0.pkl", "case0_seg.b2nd"]
    assert not folder.with_name(folder.name + ".partial").exists()
