"""Federated fingerprints merged at the server equal nnunetv2's fingerprint of the pooled data
(where the merge is exact), and the plan made from them is nnunetv2's plan of the pooled data."""

from __future__ import annotations

import json

import pytest
from nnunet_cases import synthetic_cases, write_raw_dataset
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from fedfms.nnunet.fingerprint import SiteFingerprint, merge_fingerprints, samples_per_case, site_fingerprint
from fedfms.nnunet.planning import nominal_plan, plan_experiment
from fedfms.nnunet.workspace import DATASET_NAME, dataset_json, nnunet_environment

TOTAL_SAMPLES = 6000  # foreground pixels sampled over the data set (nnU-Net's 1e8, scaled for a test)
EXACT = ("mean", "std", "min", "max")
APPROXIMATE = ("median", "percentile_00_5", "percentile_99_5")


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """nnunetv2's own fingerprint and plans of six cases pooled in one raw data set."""
    cases = synthetic_cases(6, side=64)
    root = tmp_path_factory.mktemp("nnunet")
    dataset = dataset_json(["nucleus"], len(cases))
    write_raw_dataset(cases, root / "raw" / DATASET_NAME, dataset)
    with nnunet_environment(root, augmentation_workers=1):
        extractor = DatasetFingerprintExtractor(DATASET_NAME, num_processes=1)
        extractor.num_foreground_voxels_for_intensitystats = TOTAL_SAMPLES
        fingerprint = extractor.run()
        planner = ExperimentPlanner(DATASET_NAME, gpu_memory_target_in_gb=0.1)
        plans = planner.plan_experiment()
    return cases, dataset, json.loads(json.dumps(fingerprint)), json.loads(json.dumps(plans))


def _federated(cases, dataset):
    per_case = samples_per_case(len(cases), TOTAL_SAMPLES)
    sites = [site_fingerprint(cases[:2], ["nucleus"], per_case), site_fingerprint(cases[2:], ["nucleus"], per_case)]
    sites = [SiteFingerprint.from_dict(json.loads(json.dumps(s.to_dict()))) for s in sites]  # as it travels
    return merge_fingerprints(sites)


def test_merged_fingerprint_equals_nnunets_fingerprint_of_the_pooled_data(pooled):
    cases, dataset, expected, _ = pooled
    merged = _federated(cases, dataset)
    assert merged["spacings"] == expected["spacings"]
    assert merged["shapes_after_crop"] == expected["shapes_after_crop"]
    assert merged["median_relative_size_after_cropping"] == pytest.approx(expected["median_relative_size_after_cropping"])
    for channel, properties in expected["foreground_intensity_properties_per_channel"].items():
        ours = merged["foreground_intensity_properties_per_channel"][channel]
        for key in EXACT:
            assert ours[key] == pytest.approx(properties[key], rel=1e-6), (channel, key)  # nnU-Net sums in float32
        spread = properties["max"] - properties["min"]
        for key in APPROXIMATE:
            assert abs(ours[key] - properties[key]) < 0.02 * spread, (channel, key, ours[key], properties[key])


def test_plan_from_merged_fingerprints_is_nnunets_plan_of_the_pooled_data(pooled):
    cases, dataset, _, expected = pooled
    plans = plan_experiment(_federated(cases, dataset), dataset, gpu_memory_gb=0.1)
    ours, theirs = plans["configurations"]["2d"], expected["configurations"]["2d"]
    assert ours == theirs
    assert plans["transpose_forward"] == expected["transpose_forward"]
    assert "3d_fullres" not in plans["configurations"]  # 2D slices: no volume to plan in 3D


def test_sites_with_other_classes_are_refused():
    one, two = synthetic_cases(2, classes=1), synthetic_cases(2, classes=2)
    with pytest.raises(ValueError, match="disagree on classes"):
        merge_fingerprints([site_fingerprint(one, ["a"], 100), site_fingerprint(two, ["a", "b"], 100)])


def test_a_site_without_foreground_is_named_as_such(cases):
    empty = [(data, seg * 0) for data, seg in cases[:2]]
    with pytest.raises(ValueError, match="no foreground pixel in any of the 2 training cases"):
        site_fingerprint(empty, ["a"], 100)


def test_memory_target_shapes_the_plan():
    small = nominal_plan(512, ["a"], gpu_memory_gb=0.5)["plans"]["configurations"]["2d"]
    large = nominal_plan(512, ["a"], gpu_memory_gb=8.0)["plans"]["configurations"]["2d"]
    assert small["patch_size"][0] * small["patch_size"][1] * small["batch_size"] < (
        large["patch_size"][0] * large["patch_size"][1] * large["batch_size"])


def test_overlapping_classes_plan_as_regions():
    dataset = dataset_json(["disc", "cup"], 10)
    assert dataset["labels"] == {"background": 0, "disc": [1, 3], "cup": [2, 3]}
    assert dataset["regions_class_order"] == [1, 2]
