"""`fedfms prepare` sub-commands: summaries on success, listed problems and exit 1 on failure."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from data_helpers import save_png, volume_pair
from typer.testing import CliRunner

from fedfms.data import find_clients, read_manifest
from fedfms.data.cli import prepare_app

runner = CliRunner()


def test_synthetic_and_raw(tmp_path):
    result = runner.invoke(prepare_app, ["synthetic", str(tmp_path / "fed"), "--clients", "3", "--classes", "2", "--samples", "8"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in find_clients(tmp_path / "fed")] == ["site-A", "site-B", "site-C"]
    result = runner.invoke(prepare_app, ["synthetic", str(tmp_path / "raw"), "--raw", "nifti", "--clients", "1", "--samples", "4"])
    assert result.exit_code == 0 and (tmp_path / "raw/site-A/labels/case000.nii.gz").is_file()


def test_nifti_command(tmp_path):
    volume_pair(tmp_path / "src", "c1")
    args = ["nifti", str(tmp_path / "src"), str(tmp_path / "out"), "--client", "p", "--image-size", "32", "--mask-size", "8",
            "--keep-empty-every", "0", "--no-progress"]
    result = runner.invoke(prepare_app, args)
    assert result.exit_code == 0, result.output
    assert "4 samples from 1 cases, 2 empty slices skipped" in result.output
    assert read_manifest(tmp_path / "out/p").preprocessing["keep_empty_every"] == 0


def test_images_command_levels_and_failure(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[2:10, 2:10], mask[4:6, 4:6] = 1, 2
    save_png(tmp_path / "src/images/a.png", np.zeros((16, 16, 3), np.uint8))
    save_png(tmp_path / "src/masks/a.png", mask)
    base = ["images", str(tmp_path / "src"), str(tmp_path / "out"), "--image-size", "16", "--mask-size", "16", "--no-progress"]
    result = runner.invoke(prepare_app, [*base, "--classes", "disc,cup", "--encoding", "levels", "--levels", "0=,1=disc,2=disc+cup"])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out/src/masks/a.npy").reshape(2, -1).sum(1).tolist() == [64, 4]
    result = runner.invoke(prepare_app, [*base, "--client", "bad", "--preset", "binary"])
    assert result.exit_code == 1 and "label values 1, 2" in result.output and "a.png" in result.output
    assert not (tmp_path / "out/bad").exists()


def test_cli_module_does_not_import_torch():
    code = "import sys, fedfms.data, fedfms.data.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pannuke_command_names_clients_by_tissue(tmp_path):
    from data_helpers import write_pannuke_fold

    write_pannuke_fold(tmp_path / "pannuke", 1, ["Adrenal_gland", "Uterus", "Colon"])
    args = ["pannuke", str(tmp_path / "pannuke"), str(tmp_path / "out"), "--tissue", "Adrenal_gland=Adrenal",
            "--tissue", "Uterus", "--image-size", "16", "--mask-size", "16", "--no-progress"]
    result = runner.invoke(prepare_app, args)
    assert result.exit_code == 0, result.output
    assert [p.name for p in find_clients(tmp_path / "out")] == ["Adrenal", "Uterus"]
    result = runner.invoke(prepare_app, ["pannuke", str(tmp_path / "pannuke"), str(tmp_path / "all"), "--image-size", "16",
                                         "--mask-size", "16", "--no-progress"])
    assert [p.name for p in find_clients(tmp_path / "all")] == ["Adrenal_gland", "Colon", "Uterus"]
