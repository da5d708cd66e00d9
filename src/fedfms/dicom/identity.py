"""Case ids that keep patient identity at the site.

A case id is ``HMAC-SHA256(site secret, PatientID)`` (hex, first 16 digits): the same patient
gets the same id at every re-preparation, so a train/validation split by case id stays by
patient and stays the same, but nobody without the site's secret can tell whose images a
prepared folder holds, nor test a guessed PatientID against it. Studies of one patient are
told apart by ``HMAC(secret, PatientID + StudyInstanceUID)`` in the sample ids.

The secret (32 random bytes, hex) is created on first use with mode 0600 in
``$FEDFMS_SITE_SECRET`` or, by default, ``~/.config/fedfms/site-secret``; losing it changes every
case id, sharing it lets others link ids to patients. It never leaves the site.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from fedfms.errors import FedfmsError

DEFAULT_SECRET = Path("~/.config/fedfms/site-secret")
SECRET_ENV = "FEDFMS_SITE_SECRET"


class SiteSecretError(FedfmsError):
    """The site secret cannot be read or created."""


def secret_path(path: Path | None = None) -> Path:
    """``path``, else ``$FEDFMS_SITE_SECRET``, else ``~/.config/fedfms/site-secret``."""
    return Path(path or os.environ.get(SECRET_ENV) or DEFAULT_SECRET).expanduser()


def load_secret(path: Path | None = None) -> bytes:
    """The site secret, created (0600, in a 0700 folder) if it does not exist yet; a secret file
    that others can read is refused."""
    path = secret_path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another preparation created it meanwhile
            return load_secret(path)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise SiteSecretError(f"{path}: the site secret is readable by others (mode {path.stat().st_mode & 0o777:o}); "
                              "chmod 600 it")
    secret = path.read_text().strip().encode()
    if len(secret) < 32:
        raise SiteSecretError(f"{path}: not a site secret (expected 64 hex digits)")
    return secret


def keyed_id(secret: bytes, *parts: str) -> str:
    """16 hex digits of HMAC-SHA256 over ``parts`` (joined by a separator no UID holds)."""
    return hmac.new(secret, "\\".join(parts).encode(), hashlib.sha256).hexdigest()[:16]
