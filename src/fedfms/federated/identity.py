"""Which node may serve which site. A site's place in a run is bound to what authenticates its
SuperNode, the public key registered with ``flwr supernode register``, never to the client name
a node reports about itself (any node holding a copy of a prepared folder reports that name).

- ``federation.site_keys`` pins each site to the fingerprint of its key, the string that
  ``ssh-keygen -lf node.key.pub`` prints (``SHA256:...``): a node claiming a site with another
  key, or with none, is refused. This is what a consortium should configure.
- Without it, a run binds each site to the key of the node that first served it (trust on first
  use, kept in ``clients.json`` so a resumed run keeps the binding). With SuperNode
  authentication a restarted site has the same key (and node id), so it is accepted, and a
  node with another key is refused even after the site went offline.
- Without SuperNode authentication (the simulation runtime, an insecure SuperLink) nodes have no
  key and the name is all there is: a second node claiming a site is refused while the node
  serving it is still connected, and accepted once it is gone (a site that restarted).

Refusals are logged by the server with the node, the site and the rule.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization

CLIENTS_FILE = "clients.json"
"""The run's record of who took part: site, role, sample counts and the key each node served with."""


class NodeWithKey(Protocol):
    node_id: int
    client: str
    key: str

    def label(self) -> str: ...


def key_fingerprint(public_key: bytes) -> str:
    """``SHA256:<base64>`` of a public key as Flower's SuperLink stores it (PEM
    SubjectPublicKeyInfo): the SHA-256 of its OpenSSH wire form, as ``ssh-keygen -l`` prints it.
    ``""`` for no key, or bytes that are no PEM key (the simulation runtime gives its virtual
    nodes random bytes: nothing authenticates them)."""
    try:
        key = serialization.load_pem_public_key(public_key)
    except (ValueError, TypeError):
        return ""
    wire = base64.b64decode(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")


def node_keys(grid) -> dict[int, str]:
    """Node id -> fingerprint of the key the SuperLink authenticated it with (``""`` where it
    has none), for the nodes connected now."""
    return {int(info.node_id): key_fingerprint(bytes(info.public_key)) for info in grid.get_nodes()}


def previous_keys(run_dir: Path) -> dict[str, str]:
    """The site -> key bindings of an earlier start of this run (its ``clients.json``)."""
    path = run_dir / CLIENTS_FILE
    if not path.is_file():
        return {}
    return {str(c["client"]): str(c["key"]) for c in json.loads(path.read_text()) if c.get("key")}


def refusal(node: NodeWithKey, current: NodeWithKey | None, pinned: Mapping[str, str], online: Iterable[int]
            ) -> str | None:
    """Why ``node`` may not serve the site it names (``None``: it may). ``current`` is the node
    serving that site now (if any), ``pinned`` the configured or earlier bindings, ``online``
    the ids of the connected nodes."""
    expected = pinned.get(node.client) or (current.key if current is not None else "")
    if expected:
        if node.key != expected:
            return f"its key {node.key or '(none)'} is not the key {node.client!r} is bound to ({expected})"
        return None
    if current is not None and current.node_id != node.node_id and current.node_id in set(online):
        return f"{current.label()} serves that site and is still connected"
    return None
