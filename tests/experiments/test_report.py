"""The report collects leave-one-client-out cells and says what it leaves out."""

import json

import pytest

from fedfms.experiments.report import ReportError, find_cells, loco_table


def _results(folder, unseen):
    folder.mkdir(parents=True)
    clients = {name: {"dice": d, "iou": i, "dice_per_class": [d], "iou_per_class": [i]}
               for name, d, i in (("site-A", 0.5, 0.4), ("site-B", 0.6, 0.5))}
    (folder / "results.json").write_text(json.dumps({"name": folder.parent.name, "unseen": unseen, "clients": clients,
                                                              "class_names": ["foreground"]}))


def test_runs_without_an_unseen_client_are_left_out_with_a_warning(tmp_path):
    _results(tmp_path / "FedMSA" / "site-B", "site-B")
    _results(tmp_path / "all-sites" / "run", None)
    with pytest.warns(UserWarning, match="all-sites/run: no unseen client"):
        cells = find_cells([tmp_path])
    assert [c["name"] for c in cells] == ["FedMSA"]


def test_no_leave_one_client_out_run_is_a_clear_error(tmp_path):
    _results(tmp_path / "all-sites" / "run", None)
    with pytest.warns(UserWarning), pytest.raises(ReportError, match=f"under {tmp_path}"):
        find_cells([tmp_path])


def test_the_federated_and_centralized_runs_of_one_yaml_are_two_rows(tmp_path):
    """``report A B`` on the federated and the centralized run of one config showed one row:
    both carry the config's name."""
    for kind, folder in (("federated", "fed"), ("centralized", "central")):
        _results(tmp_path / folder / "run", "site-B")
        results = tmp_path / folder / "run" / "results.json"
        results.write_text(json.dumps({**json.loads(results.read_text()), "name": "prostate", "kind": kind}))
    cells = find_cells([tmp_path / "fed" / "run", tmp_path / "central" / "run"])
    assert sorted(c["name"] for c in cells) == ["prostate (centralized)", "prostate (federated)"]
    assert [row[0] for row in loco_table(cells)[1]] == ["prostate (federated)", "prostate (centralized)"]
    _results(tmp_path / "again" / "run", "site-B")  # a third run of the same name and kind: its folder tells it apart
    results = tmp_path / "again" / "run" / "results.json"
    results.write_text(json.dumps({**json.loads(results.read_text()), "name": "prostate", "kind": "federated"}))
    names = sorted(c["name"] for c in find_cells([tmp_path]))
    assert len(set(names)) == 3 and "prostate (centralized)" in names
