"""What a preparation tells its user: a progress bar only on a terminal and in the unit it
counts, one line for a problem shared by many files, a neutral threshold preset, and no empty
folder left behind when nothing was written."""

from __future__ import annotations

import io

import numpy as np
from data_helpers import monuseg_root, save_png
from typer.testing import CliRunner

from fedfms.data import read_manifest
from fedfms.data.cli import prepare_app
from fedfms.data.prepare import prepare_monuseg
from fedfms.data.prepare.common import OutputSpec


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _jpeg_pairs(src, count):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    for i in range(count):
        save_png(src / "masks" / f"p{i}.jpg", mask, quality=70)
        save_png(src / "images" / f"p{i}.jpg", np.full((16, 16, 3), 200, np.uint8))
    return src


def test_the_progress_bar_counts_cases_on_a_terminal_and_stays_out_of_logs(tmp_path, monkeypatch):
    root = monuseg_root(tmp_path / "MoNuSeg")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    prepare_monuseg(root, OutputSpec(tmp_path / "on_terminal", "MoNuSeg", 12, 12))
    assert "/2 [" in terminal.getvalue() and "case/s" in terminal.getvalue() and "file" not in terminal.getvalue()
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    prepare_monuseg(root, OutputSpec(tmp_path / "to_log", "MoNuSeg", 12, 12))
    assert log.getvalue() == ""


def test_many_jpeg_masks_are_one_problem_with_their_count_and_nothing_is_left(tmp_path):
    src = _jpeg_pairs(tmp_path / "polyps", 3)
    result = CliRunner().invoke(prepare_app, ["images", str(src), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "1 problem(s)" in result.output and "(and 2 more JPEG masks)" in result.output
    assert "--preset threshold --classes NAME" in result.output
    assert not (tmp_path / "out").exists()


def test_the_threshold_preset_takes_the_class_name_given(tmp_path):
    src = _jpeg_pairs(tmp_path / "polyps", 2)
    result = CliRunner().invoke(prepare_app, ["images", str(src), str(tmp_path / "out"), "--preset", "threshold",
                                              "--classes", "polyp", "--image-size", "16", "--mask-size", "16"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output
    manifest = read_manifest(tmp_path / "out" / "polyps")
    assert manifest.class_names == ["polyp"] and len(manifest.samples) == 2


def test_a_failure_while_writing_leaves_no_empty_output_folder(tmp_path):
    src = tmp_path / "src"
    save_png(src / "images" / "a.png", np.full((16, 16, 3), 200, np.uint8))
    save_png(src / "masks" / "a.png", np.full((8, 8), 255, np.uint8))  # another size than its image
    result = CliRunner().invoke(prepare_app, ["images", str(src), str(tmp_path / "out")])
    assert result.exit_code == 1 and "nothing written" in result.output
    assert not (tmp_path / "out").exists()


def test_help_says_which_sizes_fit_which_backbone():
    result = CliRunner().invoke(prepare_app, ["images", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert "1024 for SAM's ViTs (the default), 256 for LiteMedSAM" in text.replace("│ ", "").replace(" │", "")
