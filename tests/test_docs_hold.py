"""Statements of the docs that code can check: the Flower version they name, the exit status of
a refused SuperNode, which prepare commands take --no-progress, the README's SuperNode example."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.main import get_command

from fedfms.data.cli import prepare_app

ROOT = Path(__file__).resolve().parents[1]


def test_the_deployment_guide_names_the_pinned_flower():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = re.search(r"flwr\[[a-z,]+\]==(\d+\.\d+)", " ".join(pins))[1]
    named = set(re.findall(r"Flower (\d+\.\d+)", (ROOT / "docs" / "deployment.md").read_text()))
    assert named == {pinned}


def test_a_flower_error_exit_is_status_1_as_the_guide_says():
    ended = subprocess.run([sys.executable, "-c", "from flwr.supercore.exit import flwr_exit; flwr_exit(305)"],
                           capture_output=True, text=True, timeout=120)
    assert ended.returncode == 1 and "Exit Code: 305" in ended.stdout + ended.stderr
    guide = " ".join((ROOT / "docs" / "deployment.md").read_text().split())
    assert "exits with code 305" not in guide and "process's exit status, which is 1" in guide


def test_every_prepare_command_but_synthetic_takes_no_progress_as_the_data_guide_says():
    commands = get_command(prepare_app).commands
    with_bar = {name for name, command in commands.items() if any(p.name == "progress" for p in command.params)}
    assert with_bar == set(commands) - {"synthetic"}
    assert "Every converter (every command but `synthetic`)" in (ROOT / "docs" / "data.md").read_text()


def test_the_readme_supernode_example_has_its_own_runtime_port_and_the_cli_connection():
    readme = (ROOT / "README.md").read_text()
    example = readme[readme.index("flower-supernode --superlink"):]
    example = example[:example.index("\n\n")]
    assert "--port " in example
    assert "[superlink.fedfms]" in readme and "finished:failed" in readme
