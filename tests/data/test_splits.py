"""Case-wise train/validation splits and leave-one-client-out folds."""

from __future__ import annotations

import warnings

import pytest

from fedfms.data import (
    ClientManifest,
    SampleRecord,
    leave_one_client_out,
    load_split,
    save_split,
    train_val_split,
    validation_cases,
)


def manifest(client: str, cases: int, per_case: int = 5, classes=("organ",)) -> ClientManifest:
    samples = [
        SampleRecord(id=f"c{c:03d}_{k}", case_id=f"c{c:03d}", source=f"c{c:03d}.nii.gz", slice_index=k)
        for c in range(cases)
        for k in range(per_case)
    ]
    return ClientManifest(client=client, class_names=list(classes), image_size=64, mask_size=16, samples=samples)


def cases_of(m: ClientManifest, indices: list[int]) -> set[str]:
    return {m.samples[i].case_id for i in indices}


def test_no_case_in_both_and_nine_to_one():
    m = manifest("A", cases=40)
    train, val = train_val_split(m, 0.1, seed=0)
    assert not cases_of(m, train) & cases_of(m, val)
    assert sorted(train + val) == list(range(len(m.samples)))
    assert len(cases_of(m, val)) == 4 and len(val) == 20 and len(train) == 180


def test_deterministic_and_seed_dependent():
    m = manifest("A", cases=30)
    assert train_val_split(m, 0.1, 3) == train_val_split(m, 0.1, 3)
    assert train_val_split(m, 0.1, 3) != train_val_split(m, 0.1, 4)


def test_few_cases_rule():
    with pytest.warns(UserWarning, match="single case"):
        assert train_val_split(manifest("A", 1), 0.1) == (list(range(5)), [])
    train, val = train_val_split(manifest("A", 2), 0.1)
    assert len(train) == 5 and len(val) == 5  # >= 1 validation case once there are 2
    train, val = train_val_split(manifest("A", 5), 0.9)
    assert len(train) == 5  # always >= 1 training case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train_val_split(manifest("A", 1), 0.0) == (list(range(5)), [])


def test_leave_one_client_out_and_saved_split(tmp_path):
    manifests = {name: manifest(name, cases) for name, cases in (("A", 10), ("B", 20), ("C", 7))}
    fold = leave_one_client_out(manifests, "B", 0.1, seed=1)
    assert fold.unseen == "B" and "B" not in fold.train and "B" not in fold.val
    assert fold.test == [s.id for s in manifests["B"].samples]
    for name in ("A", "C"):
        ids = {s.id: s.case_id for s in manifests[name].samples}
        assert not {ids[i] for i in fold.train[name]} & {ids[i] for i in fold.val[name]}
        assert len(fold.train[name]) + len(fold.val[name]) == len(ids)
    path = tmp_path / "run" / "split.json"
    save_split(fold, path)
    assert load_split(path) == fold and not list(path.parent.glob(".*"))


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="not one of"):
        leave_one_client_out({"A": manifest("A", 3)}, "Z")
    with pytest.raises(ValueError, match="different class names"):
        leave_one_client_out({"A": manifest("A", 3), "B": manifest("B", 3, classes=("disc", "cup"))}, "A")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        load_split(tmp_path / "bad.json")


@pytest.mark.parametrize("cases, rule, expected", [
    (20, "round", 2), (20, "floor_plus_one", 3), (20, "floor", 2),  # the reference: n // 10 + 1 for volumes
    (9, "round", 1), (9, "floor_plus_one", 1), (9, "floor", 0),  # ... int(0.1 n) for fundus images
    (2, "floor_plus_one", 1), (1, "floor_plus_one", 0),  # a client always keeps a training case
])
def test_validation_case_counts_by_rule(cases, rule, expected):
    assert validation_cases(cases, 0.1, rule) == expected
    if cases >= 2:
        train, val = train_val_split(manifest("A", cases), 0.1, val_count=rule)
        assert len(val) == 5 * expected and len(train) == 5 * (cases - expected)
