"""The manifest of a prepared client folder: what each stored sample is and where it came from.

A prepared client folder looks like::

    site-A/
      manifest.json          # ClientManifest (this module)
      images/<id>.npy        # uint8 (K, S, S), K = 1 (grey, repeated to 3 on load) or 3
      masks/<id>.npy         # uint8 (C, M, M) in {0, 1}, one channel per class

The manifest is the only file a reader trusts: sample files not listed in it are ignored,
which is what makes appends safe (sample files first, manifest replaced atomically last).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedfms.errors import FedfmsError

MANIFEST_NAME = "manifest.json"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
FORMAT_VERSION = 1

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
MAX_CLIENT_NAME = 64


class ManifestError(FedfmsError, ValueError):
    """A client folder has no readable manifest; the message names the folder."""


def check_client_name(name: str) -> str:
    """``name`` if it can name a client: it is the client's folder under the prepared root and
    travels to the server, so one plain folder name (letters, digits, ``. _ + -``, starting
    with a letter or digit, at most 64 characters): no path, no hidden or relative name."""
    if not _SAFE_ID.match(name) or len(name) > MAX_CLIENT_NAME:
        raise ManifestError(f"client name {name!r}: expected a plain folder name (letters, digits, . _ + -; "
                            f"starting with a letter or digit; at most {MAX_CLIENT_NAME} characters)")
    return name


class SampleRecord(BaseModel):
    """One stored 2D sample.

    ``id`` names the sample files (unique in the client, file-name safe); ``case_id`` is the
    volume / patient / case it belongs to (the unit of the train/validation split);
    ``source`` / ``mask_source`` the files it was made from; ``slice_index`` the depth index
    for volumes; ``tile`` the ``(y, x, height, width)`` crop of the source for tiled images.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    case_id: str
    source: str
    slice_index: int | None = None
    mask_source: str | None = None
    tile: tuple[int, int, int, int] | None = None

    @field_validator("id")
    @classmethod
    def _file_name_safe(cls, value: str) -> str:
        if not _SAFE_ID.match(value):
            raise ValueError(f"sample id {value!r} is not file-name safe (letters, digits, . _ + -)")
        return value


class ClientManifest(BaseModel):
    """Everything a client node knows about its prepared data."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    client: str
    class_names: list[str] = Field(min_length=1)
    image_size: int = Field(ge=1)
    mask_size: int = Field(ge=1)
    samples: list[SampleRecord] = Field(default_factory=list)
    preprocessing: dict[str, Any] = Field(default_factory=dict)

    @field_validator("client")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        check_client_name(value)  # a ManifestError is a ValueError: pydantic reports it
        return value

    @field_validator("samples")
    @classmethod
    def _unique_ids(cls, samples: list[SampleRecord]) -> list[SampleRecord]:
        seen: set[str] = set()
        twice = sorted({s.id for s in samples if s.id in seen or seen.add(s.id)})
        if twice:
            raise ValueError(f"sample ids listed twice: {twice[:5]}")
        return samples

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def case_ids(self) -> list[str]:
        """Distinct case ids in order of first appearance."""
        return list(dict.fromkeys(s.case_id for s in self.samples))


def safe_id(text: str) -> str:
    """Turn a relative path or name into a file-name safe sample id (``a/b c`` -> ``a__b_c``)."""
    text = text.replace("\\", "/").replace("/", "__")
    text = re.sub(r"[^A-Za-z0-9._+-]", "_", text).lstrip("._-+")
    return text or "sample"


def read_manifest(client_dir: Path) -> ClientManifest:
    """Load ``client_dir/manifest.json``; :class:`ManifestError` names the folder if absent/corrupt."""
    path = Path(client_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{client_dir}: not a prepared client folder (no {MANIFEST_NAME})")
    try:
        return ClientManifest.model_validate_json(path.read_bytes())
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in err.errors()[:3])
        raise ManifestError(f"{path}: corrupt manifest: {problems}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: corrupt manifest: {err}") from None


def find_clients(root: Path) -> list[Path]:
    """Prepared client folders directly under ``root``, sorted by name (temporary folders skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: no such folder of prepared clients")
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_NAME).is_file()
    )
