"""The console script: user errors are one line and exit 1, not a traceback."""

import subprocess
import sys


def _fedfms(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fedfms.cli", *args], capture_output=True, text=True, timeout=120, env=env)


def test_a_config_typo_is_one_line_naming_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {root: data}\nfederation: {rounds: -1}\n")
    result = _fedfms("train", "--config", str(path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: {path}: federation.rounds: Input should be greater than or equal to 1" in result.stderr


def test_missing_client_folders_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"data: {{root: {tmp_path / 'nowhere'}, clients: [a, b]}}\n")
    result = _fedfms("train", "--config", str(path), "--centralized")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "nowhere" in result.stderr
