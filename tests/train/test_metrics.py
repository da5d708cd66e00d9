import math

import pytest
import torch

from fedfms.train.metrics import ScoreAccumulator, image_scores


def _logits(mask: torch.Tensor) -> torch.Tensor:
    """Confident logits that reproduce a binary mask at any threshold in (0.1, 0.9)."""
    return torch.where(mask > 0, 5.0, -5.0)


def test_standard_dice_iou_of_partial_overlap():
    truth = torch.zeros(1, 1, 4, 4)
    truth[0, 0, :2, :] = 1  # 8 pixels
    pred = torch.zeros(1, 1, 4, 4)
    pred[0, 0, 1:3, :] = 1  # 8 pixels, 4 shared
    dice, iou = image_scores(_logits(pred), truth)
    assert dice.item() == pytest.approx(2 * 4 / 16)
    assert iou.item() == pytest.approx(4 / 12)


def test_empty_truth_and_prediction_scores_one_and_false_positive_scores_zero():
    truth = torch.zeros(2, 1, 4, 4)
    pred = torch.zeros(2, 1, 4, 4)
    pred[1, 0, 0, 0] = 1
    dice, iou = image_scores(_logits(pred), truth)
    assert dice[:, 0].tolist() == [1.0, 0.0]
    assert iou[:, 0].tolist() == [1.0, 0.0]


def test_standard_threshold_is_on_probability():
    truth = torch.ones(1, 1, 2, 2)
    logits = torch.full((1, 1, 2, 2), 0.3)  # sigmoid = 0.574
    assert image_scores(logits, truth, threshold=0.5)[0].item() == 1.0
    assert image_scores(logits, truth, threshold=0.6)[0].item() == 0.0


def test_paper_protocol_averages_thresholds_on_raw_logits():
    truth = torch.ones(1, 1, 2, 2)
    logits = torch.full((1, 1, 2, 2), 0.4)  # above 0.1 and 0.3, below 0.5, 0.7, 0.9
    dice, iou = image_scores(logits, truth, protocol="paper")
    smooth = 1e-4  # the reference's Dice smoothing; its IoU smoothing is 1e-6
    hit, miss = (8 + smooth) / (8 + smooth), smooth / (4 + smooth)
    assert dice.item() == pytest.approx((2 * hit + 3 * miss) / 5)
    assert iou.item() == pytest.approx((2 * 1.0 + 3 * (1e-6 / (4 + 1e-6))) / 5, rel=1e-9)
    assert iou.item() != pytest.approx((2 * 1.0 + 3 * (1e-4 / (4 + 1e-4))) / 5, rel=1e-9)


def test_accumulator_means_over_images_per_class():
    acc = ScoreAccumulator(["disc", "cup"])
    truth = torch.zeros(2, 2, 4, 4)
    truth[:, 0] = 1
    pred = truth.clone()
    pred[1, 0] = 0  # image 2 misses the disc entirely
    acc.add(_logits(pred), truth)
    summary = acc.summary()
    assert summary["images"] == 2
    assert summary["dice_per_class"] == pytest.approx([0.5, 1.0])
    assert summary["dice"] == pytest.approx(0.75)


def test_empty_accumulator_is_nan_not_zero():
    summary = ScoreAccumulator(["x"]).summary()
    assert summary["images"] == 0 and math.isnan(summary["dice"])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        image_scores(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))


def test_case_protocol_pools_the_slices_of_a_case_so_lesion_free_slices_cannot_score_one():
    """Two patients, two slices each. Patient a: one lesion slice (8 px) and one lesion-free slice
    with 8 false-positive pixels; patient b: a lesion-free slice predicted empty and a lesion
    slice missed entirely. Per slice, the empty/empty slice of b scores 1; per case it adds
    nothing and b scores 0."""
    truth = torch.zeros(4, 1, 4, 4)
    truth[0, 0, :2, :] = 1
    truth[3, 0, 2:, :] = 1
    pred = torch.zeros(4, 1, 4, 4)
    pred[0, 0, :2, :] = 1
    pred[1, 0, 2:, :] = 1
    cases = ["a", "a", "b", "b"]
    per_case = ScoreAccumulator(["lesion"], protocol="case")
    per_case.add(_logits(pred[:3]), truth[:3], cases[:3])  # case b spans two batches
    per_case.add(_logits(pred[3:]), truth[3:], cases[3:])
    summary = per_case.summary()
    assert summary["cases"] == 2 and summary["images"] == 4
    dice_a, iou_a = 2 * 8 / (16 + 8), 8 / 16
    assert summary["dice"] == pytest.approx((dice_a + 0.0) / 2)
    assert summary["iou"] == pytest.approx((iou_a + 0.0) / 2)
    per_slice = ScoreAccumulator(["lesion"])
    per_slice.add(_logits(pred), truth)
    assert per_slice.summary()["dice"] == pytest.approx((1 + 0 + 1 + 0) / 4)


def test_case_protocol_scores_an_empty_case_predicted_empty_as_one_and_needs_case_ids():
    acc = ScoreAccumulator(["lesion"], protocol="case")
    acc.add(torch.full((2, 1, 4, 4), -5.0), torch.zeros(2, 1, 4, 4), ["healthy", "healthy"])
    assert acc.summary()["dice"] == 1.0 and acc.summary()["cases"] == 1
    with pytest.raises(ValueError, match="one case id per image: 2 images, no case ids"):
        acc.add(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="scores whole cases"):
        image_scores(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), protocol="case")


def test_per_case_pools_a_case_or_averages_its_images_and_needs_case_ids():
    truth = torch.zeros(4, 2, 4, 4)
    truth[:, :, :2, :] = 1
    pred = truth.clone()
    pred[1] = 0  # case a: one slice of two missed; case b: both right
    cases = ["a", "a", "b", "b"]
    pooled = ScoreAccumulator(["x", "y"], protocol="case")
    pooled.add(_logits(pred), truth, cases)
    assert pooled.per_case() == pytest.approx({"a": 2 * 8 / (8 + 16), "b": 1.0})
    assert sum(pooled.per_case().values()) / 2 == pytest.approx(pooled.summary()["dice"])
    per_image = ScoreAccumulator(["x", "y"])
    per_image.add(_logits(pred[:3]), truth[:3], cases[:3])  # case b spans two batches
    per_image.add(_logits(pred[3:]), truth[3:], cases[3:])
    assert per_image.per_case() == {"a": 0.5, "b": 1.0}
    assert sum(per_image.per_case().values()) / 2 == pytest.approx(per_image.summary()["dice"])
    no_ids = ScoreAccumulator(["x", "y"])
    no_ids.add(_logits(pred), truth)
    with pytest.raises(ValueError, match="one case id per image: 4 images, 0 case ids"):
        no_ids.per_case()
    assert ScoreAccumulator(["x"]).per_case() == {}
