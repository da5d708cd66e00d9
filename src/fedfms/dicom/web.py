"""A PACS over DICOMweb (dicomweb-client): find a study's series (QIDO-RS), download them
instance by instance (WADO-RS), store a DICOM SEG back (STOW-RS).

Credentials never come from the command line (where ``ps`` and shell histories show them) nor
from the URL, and never appear in a message. They are read from the environment:

* ``FEDFMS_DICOMWEB_TOKEN``: a bearer token; or
* ``FEDFMS_DICOMWEB_USER`` and ``FEDFMS_DICOMWEB_PASSWORD``: HTTP basic authentication; or
* ``FEDFMS_DICOMWEB_CREDENTIALS``: a file (not readable by others) of ``token=...`` or
  ``user=...`` and ``password=...`` lines.

A request that fails (or answers 429, 503...) is tried once more after half a second; then the
command stops. Downloads go into a hidden temporary folder renamed into place only once complete, so a
transfer that stops half-way (the PACS went down, the network dropped) leaves nothing behind
and fails with one line naming the server and what happened.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fedfms.errors import FedfmsError

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

TOKEN_ENV, USER_ENV, PASSWORD_ENV, FILE_ENV = (
    "FEDFMS_DICOMWEB_TOKEN", "FEDFMS_DICOMWEB_USER", "FEDFMS_DICOMWEB_PASSWORD", "FEDFMS_DICOMWEB_CREDENTIALS")
#: Series whose objects are not image planes to segment (labels, reports, presentation states).
NON_IMAGE = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "RTPLAN", "RTDOSE", "DOC"}
SERIES_UID, MODALITY, SOP_UID, DESCRIPTION = "0020000E", "00080060", "00080018", "0008103E"


class PacsError(FedfmsError):
    """A DICOMweb transfer failed or was refused; the message names the server, never a secret."""


def credentials() -> dict[str, str]:
    """``{"token": ...}`` or ``{"user": ..., "password": ...}`` from the environment or the
    credentials file; empty for a PACS without authentication."""
    if os.environ.get(TOKEN_ENV):
        return {"token": os.environ[TOKEN_ENV]}
    if os.environ.get(USER_ENV):
        return {"user": os.environ[USER_ENV], "password": os.environ.get(PASSWORD_ENV, "")}
    if not os.environ.get(FILE_ENV):
        return {}
    path = Path(os.environ[FILE_ENV]).expanduser()
    try:
        if path.stat().st_mode & 0o077:
            raise PacsError(f"{path}: the DICOMweb credentials file is readable by others; chmod 600 it")
        pairs = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    except OSError as err:
        raise PacsError(f"{path}: cannot read the DICOMweb credentials file ({err.strerror})") from None
    found = {k.strip(): v.strip() for k, v in pairs.items() if k.strip() in ("token", "user", "password")}
    if not ("token" in found or "user" in found):
        raise PacsError(f"{path}: no 'token=' or 'user=' line")
    return found


def pacs_client(url: str) -> DICOMwebClient:
    """A DICOMweb client of ``url`` authenticated by :func:`credentials`."""
    from dicomweb_client import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(f"--dicomweb {url!r}: expected an http(s) URL of the DICOMweb root, e.g. https://pacs/dicom-web")
    if parts.username or parts.password:
        raise PacsError("--dicomweb: credentials in the URL are refused; set them in the environment "
                        f"({TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}, or {FILE_ENV})")
    found = credentials()
    session = create_session_from_user_pass(found["user"], found["password"]) if "user" in found else create_session()
    if "token" in found:
        session.headers["Authorization"] = f"Bearer {found['token']}"
    client = DICOMwebClient(url, session=session)
    client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=250)  # one retry, not 30 s of back-off
    return client


@contextmanager
def transfer(client: DICOMwebClient, what: str) -> Iterator[None]:
    """Turn a failed request into one :class:`PacsError` line naming the server and ``what``."""
    import requests

    server = client.base_url
    try:
        yield
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        hint = "; check the DICOMweb credentials" if status in (401, 403) else ""
        raise PacsError(f"{server}: {what} refused (HTTP {status}){hint}") from None
    except (requests.RequestException, OSError) as err:
        raise PacsError(f"{server}: {what} failed, the PACS stopped answering ({type(err).__name__}); "
                        "nothing was kept, run the command again") from None


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value", [""])
    return str(values[0]) if values else ""


def study_series(client: DICOMwebClient, study: str) -> dict[str, tuple[str, str]]:
    """SeriesInstanceUID -> (modality, description) of every series of ``study``."""
    with transfer(client, f"search of study {study}"):
        found = client.search_for_series(study_instance_uid=study)
    if not found:
        raise PacsError(f"{client.base_url}: no study {study} (or no series in it)")
    return {_value(s, SERIES_UID): (_value(s, MODALITY), _value(s, DESCRIPTION)) for s in found}


def image_series(client: DICOMwebClient, study: str, series: str | None) -> str:
    """The series of ``study`` to segment: ``series``, or its only image series."""
    found = study_series(client, study)
    if series is not None:
        if series not in found:
            raise PacsError(f"{client.base_url}: study {study} has no series {series}")
        return series
    images = {uid: v for uid, v in found.items() if v[0] not in NON_IMAGE}
    if len(images) != 1:
        listing = "; ".join(f"{uid} ({m} {d!r})" for uid, (m, d) in images.items()) or "none"
        raise PacsError(f"{client.base_url}: study {study} holds {len(images)} image series ({listing}); "
                        "choose one with --series UID")
    return next(iter(images))


def download_series(client: DICOMwebClient, study: str, series: str, folder: Path) -> None:
    """Every instance of one series into ``folder`` as ``<SOPInstanceUID>.dcm``."""
    with transfer(client, f"download of series {series}"):
        instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
        for item in instances:
            uid = _value(item, SOP_UID)
            ds = client.retrieve_instance(study, series, uid)
            ds.save_as(folder / f"{uid}.dcm", enforce_file_format=True)


def download_study(client: DICOMwebClient, study: str, target: Path, series: tuple[str, ...] = ()) -> Path:
    """The series of ``study`` (all, or ``series``) into ``target/<StudyInstanceUID>/<SeriesInstanceUID>/``;
    an existing download of the study is replaced only once the new one is complete."""
    found = study_series(client, study)
    missing = [uid for uid in series if uid not in found]
    if missing:
        raise PacsError(f"{client.base_url}: study {study} has no series {', '.join(missing)}")
    target.mkdir(parents=True, exist_ok=True)
    final = target / study
    staging = Path(tempfile.mkdtemp(prefix=f".{study}.", dir=target))
    try:
        for uid in series or tuple(found):
            (staging / uid).mkdir()
            download_series(client, study, uid, staging / uid)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def store(client: DICOMwebClient, path: Path) -> None:
    """STOW-RS one DICOM file."""
    from pydicom import dcmread

    with transfer(client, f"storing {path.name}"):
        client.store_instances([dcmread(path)])


def predict_from_pacs(url: str, study: str, series: str | None, checkpoint: Path, output: Path,
                      class_names: list[str] | None, **settings: Any) -> list[Path]:
    """Download one series of ``study``, segment it into ``output`` (NIfTI + SEG, as for a
    folder) and store the SEG back in the PACS; returns the written files."""
    from fedfms.predict import predict_dicom

    client = pacs_client(url)
    chosen = image_series(client, study, series)
    with tempfile.TemporaryDirectory(prefix="fedfms-dicomweb-") as folder:
        download_series(client, study, chosen, Path(folder))
        written = predict_dicom(checkpoint, Path(folder), output, chosen, class_names, **settings)
    store(client, next(p for p in written if p.name.endswith(".seg.dcm")))
    return written
