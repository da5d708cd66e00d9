"""A real PACS for the tests: Orthanc with its DICOMweb plugin on a free loopback port, basic
authentication, storage in a temporary folder; and a loopback TCP relay that kills it after
passing on a number of response bytes (a PACS that dies in the middle of a transfer)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "site-a", "orthanc-test-password"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Orthanc:
    process: subprocess.Popen
    port: int

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    def upload(self, paths: list[Path]) -> None:
        for path in paths:
            requests.post(f"{self.rest}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30).raise_for_status()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def start_orthanc(folder: Path) -> Orthanc:
    """Start Orthanc with a configuration written into ``folder``; wait until it answers."""
    port = free_port()
    config = {
        "Name": "fedfms-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("w")
    process = subprocess.Popen([str(ORTHANC), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(process, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}: {(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{server.rest}/system", auth=(USER, PASSWORD), timeout=1).ok:
                return server
        except requests.ConnectionError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("Orthanc did not answer within 60 s")


class KillingRelay:
    """Loopback TCP relay to ``server`` that kills it once ``limit`` response bytes went through."""

    def __init__(self, server: Orthanc, limit: int):
        self.server, self.limit, self.relayed = server, limit, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.server.port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, response: bool) -> None:
        try:
            while data := source.recv(4096):
                target.sendall(data)
                if response:
                    with self.lock:
                        self.relayed += len(data)
                        if self.relayed >= self.limit and self.server.process.poll() is None:
                            self.server.stop()
        except OSError:
            pass
        finally:
            for s in (source, target):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()
