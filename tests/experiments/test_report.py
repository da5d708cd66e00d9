"""The report collects leave-one-client-out cells and says what it leaves out."""

import json

import pytest

from fedfms.experiments.report import ReportError, find_cells


def _results(folder, unseen):
    folder.mkdir(parents=True)
    clients = {"site-A": {"dice": 0.5, "iou": 0.4}, "site-B": {"dice": 0.6, "iou": 0.5}}
    (folder / "results.json").write_text(json.dumps({"name": folder.parent.name, "unseen": unseen, "clients": clients}))


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
