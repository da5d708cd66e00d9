"""Secrets kept at the site: the case-id key (created 0600, refused when others can read it)
and DICOMweb credentials (environment or a 0600 file, never the URL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedfms.dicom.identity import SiteSecretError, keyed_id, load_secret
from fedfms.dicom.web import PacsError, credentials, pacs_client


def test_site_secret_is_created_once_private_and_keys_the_ids(site_secret: Path) -> None:
    first = load_secret()
    assert site_secret.stat().st_mode & 0o777 == 0o600 and site_secret.parent.stat().st_mode & 0o077 == 0
    assert load_secret() == first  # stable: the same case ids at every re-preparation
    assert keyed_id(first, "PAT-1") != keyed_id(b"another site's secret, 32+ bytes long", "PAT-1")
    assert keyed_id(first, "PAT-1", "1.2") != keyed_id(first, "PAT-11", ".2")  # the parts cannot run together
    site_secret.chmod(0o644)
    with pytest.raises(SiteSecretError, match="readable by others"):
        load_secret()


def test_credentials_from_environment_or_private_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FEDFMS_DICOMWEB_TOKEN", "FEDFMS_DICOMWEB_USER", "FEDFMS_DICOMWEB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEDFMS_DICOMWEB_CREDENTIALS", str(tmp_path / "pacs"))
    (tmp_path / "pacs").write_text("# site PACS\nuser = reader\npassword = s3cret=x\n")
    (tmp_path / "pacs").chmod(0o600)
    assert credentials() == {"user": "reader", "password": "s3cret=x"}
    assert pacs_client("https://pacs.example/dicom-web")._session.auth == ("reader", "s3cret=x")
    monkeypatch.setenv("FEDFMS_DICOMWEB_TOKEN", "tok")
    assert pacs_client("https://pacs.example/dicom-web")._session.headers["Authorization"] == "Bearer tok"
    monkeypatch.delenv("FEDFMS_DICOMWEB_TOKEN")
    (tmp_path / "pacs").chmod(0o640)
    with pytest.raises(PacsError, match="readable by others"):
        credentials()
    with pytest.raises(PacsError, match="credentials in the URL are refused") as caught:
        pacs_client("https://reader:s3cret@pacs.example/dicom-web")
    assert "s3cret" not in str(caught.value)
