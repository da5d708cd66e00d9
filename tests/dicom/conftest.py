"""Every DICOM test keeps its site secret in its own temporary folder, never in ~/.config."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def site_secret(tmp_path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "site" / "secret"
    monkeypatch.setenv("FEDFMS_SITE_SECRET", str(path))
    return path
