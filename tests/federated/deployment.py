"""Harness of the deployment test: TLS material, SuperNode key pairs, free loopback ports, and
a real Flower deployment (one SuperLink, one SuperNode per site, ``flwr run``) started as
separate processes that are always stopped again, with every process's output kept in a log
file.

Everything binds to 127.0.0.1 and every Flower process gets its own ``FLWR_HOME`` under the
test's temporary folder, so a run never reads or writes ``~/.flwr``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"


# --- TLS -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA every SuperNode trusts, and the SuperLink's certificate and key."""

    ca: Path
    server_cert: Path
    server_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_certificates(folder: Path, hosts: tuple[str, ...] = (LOOPBACK, "localhost")) -> Certificates:
    """A self-signed CA and a server certificate it signs, valid for ``hosts`` (IP addresses
    and DNS names, put in the subject alternative name) for one day."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedfms test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = _key()
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certs.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, certs.server_key)
    return certs


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's key pair, as ``ssh-keygen -t ecdsa -b 384 -N "" -f <name>`` writes it:
    ``<name>`` (private, OpenSSH format) and ``<name>.pub``. The SuperLink knows the node by the
    public key once it is registered (``flwr supernode register``)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


# --- ports and probes ------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def https_get(url: str, ca: Path | None, timeout: float = 5.0) -> int:
    """Status of a GET over HTTPS that trusts only ``ca`` (``None``: the system's CAs)."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:  # an HTTP answer all the same
        return err.code


def plain_http_answers(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether the port answers an unencrypted HTTP request with an HTTP response."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = sock.recv(64)
    except OSError:
        return False
    return data.startswith(b"HTTP/")


# --- processes -------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ..., starttime)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): a process, told apart from a later one that reuses its pid."""
    fields = _stat(pid)
    return (pid, fields[19]) if fields else None


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process now visible in /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, also those that left its session (Flower's SuperExec)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(identity: tuple[int, str]) -> bool:
    """Whether that very process (same pid and start time) still runs (zombies do not)."""
    fields = _stat(identity[0])
    return bool(fields) and fields[19] == identity[1] and fields[0] != "Z"


def _signal(identity: tuple[int, str], sig: int) -> None:
    if _alive(identity):
        try:
            os.kill(identity[0], sig)
        except (ProcessLookupError, PermissionError):
            pass


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Process:
    """One started command; its stdout and stderr go to ``log``."""

    name: str
    popen: subprocess.Popen
    log: Path

    def running(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Deployment:
    """Starts Flower's processes for one test and stops all of them (and everything they
    started) in :meth:`stop`, which also runs when the ``with`` block fails."""

    root: Path
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    processes: list[Process] = field(default_factory=list)
    _known: dict[tuple[int, str], str] = field(default_factory=dict)  # (pid, start time) -> command

    def __enter__(self) -> Deployment:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # environment -----------------------------------------------------------------------
    def env(self, home: str) -> dict[str, str]:
        """Environment of a Flower process: our virtualenv first on PATH (the SuperLink and
        SuperNodes start ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by
        name), a private FLWR_HOME, no telemetry, no update check, one thread per process."""
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(self.bin_dir.parent)
        env["FLWR_HOME"] = str(self.root / "flwr-home" / home)
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        for threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[threads] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        Path(env["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)
        return env

    def tool(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            found = shutil.which(name)
            if found is None:
                raise FileNotFoundError(f"{name} is neither in {self.bin_dir} nor on PATH")
            return found
        return str(path)

    def start(self, name: str, args: list[str], home: str | None = None, stdout: Path | None = None) -> Process:
        """Start ``args`` (first item: a tool of the virtualenv) in its own session; its
        output goes to ``logs/<name>.log`` (stdout to ``stdout`` instead, if given)."""
        log = self.root / "logs" / f"{name}.log"
        for n in range(2, 100):  # a second command of the same name gets its own log
            if not log.exists():
                break
            log = self.root / "logs" / f"{name}-{n}.log"
        with log.open("wb") as err, (stdout.open("wb") if stdout else open(os.devnull, "wb")) as out:
            popen = subprocess.Popen([self.tool(args[0]), *args[1:]], stdout=out if stdout else err,
                                     stderr=subprocess.STDOUT if stdout is None else err,
                                     stdin=subprocess.DEVNULL, env=self.env(home or name), cwd=self.root,
                                     start_new_session=True)
        process = Process(name, popen, log)
        self.processes.append(process)
        self._remember(popen.pid)
        return process

    def run(self, name: str, args: list[str], timeout: float, home: str | None = None) -> tuple[int, str, str]:
        """Run a short command (``flwr ...``) to its end: (exit code, stdout, stderr)."""
        out = self.root / "logs" / f"{name}.{len(self.processes)}.stdout"
        process = self.start(name, args, home, stdout=out)
        try:
            process.popen.wait(timeout=timeout)
        finally:
            self.remember_descendants()
        return process.popen.returncode, out.read_text(errors="replace"), process.log.read_text(errors="replace")

    def remember_descendants(self) -> None:
        """Note the processes started by ours so far (so they are stopped even if their
        parent has exited by the time :meth:`stop` runs)."""
        for process in self.processes:
            if process.running():  # an exited (reaped) child's pid may belong to someone else now
                for pid in descendants(process.popen.pid):
                    self._remember(pid)

    def _remember(self, pid: int) -> None:
        if (identity := _identity(pid)) is not None and identity not in self._known:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                command = ""
            self._known[identity] = command

    def seen(self, fragment: str) -> list[tuple[int, str]]:
        """The processes seen so far (ours and their descendants) whose command line
        contains ``fragment``, e.g. ``flwr-serverapp``."""
        self.remember_descendants()
        return [identity for identity, command in self._known.items() if fragment in command]

    @staticmethod
    def is_alive(identity: tuple[int, str]) -> bool:
        """Whether that process still runs."""
        return _alive(identity)

    # the Flower processes --------------------------------------------------------------
    def superlink(self, port: int, certs: Certificates | None, node_auth: bool = False) -> Process:
        """A SuperLink: Fleet, Control and Runtime (ServerAppIo) APIs on one HTTPS port.
        Runtime dependency installation (``uv sync`` of the app's dependencies) is off; with
        ``node_auth`` only SuperNodes whose public key is registered may connect."""
        tls = (["--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.server_cert),
                "--ssl-keyfile", str(certs.server_key)] if certs else ["--insecure"])
        auth = ["--enable-supernode-auth"] if node_auth else []
        return self.start("superlink", ["flower-superlink", *tls, *auth, "--host", LOOPBACK, "--port", str(port),
                                        "--disable-runtime-dependency-installation",
                                        "--database", str(self.root / "superlink.db")])

    def supernode(self, name: str, superlink_port: int, runtime_port: int, node_config: str,
                  ca: Path | None, key: Path | None = None, extra: tuple[str, ...] = ()) -> Process:
        """A SuperNode that reaches the SuperLink over HTTPS trusting ``ca`` (``None``: the
        system's CAs) and signs its requests with the private ``key`` (see :func:`make_node_key`);
        its own Runtime API (for its ClientApp processes) on ``runtime_port``."""
        tls = ["--root-certificates", str(ca)] if ca else []
        auth = ["--auth-supernode-private-key", str(key)] if key else []
        return self.start(name, ["flower-supernode", "--superlink", f"{LOOPBACK}:{superlink_port}", *tls, *auth,
                                 "--host", LOOPBACK, "--port", str(runtime_port),
                                 "--node-config", node_config, *extra])

    def write_cli_config(self, connection: str, superlink_port: int, ca: Path, home: str = "cli") -> Path:
        """The Flower configuration (``$FLWR_HOME/config.toml``) of the ``flwr`` command: one
        SuperLink connection, TLS verified against ``ca``."""
        config = Path(self.env(home)["FLWR_HOME"]) / "config.toml"
        config.write_text(f'[superlink]\ndefault = "{connection}"\n\n'
                          f'[superlink.{connection}]\naddress = "{LOOPBACK}:{superlink_port}"\n'
                          f'root-certificates = "{ca}"\n')
        return config

    def _flwr_json(self, name: str, args: list[str], timeout: float) -> dict:
        code, out, err = self.run(name, ["flwr", *args, "--format", "json"], timeout=timeout, home="cli")
        try:
            payload = json.loads(out[out.find("{"):])
        except ValueError:
            payload = None
        if code != 0 or not isinstance(payload, dict):
            raise RuntimeError(f"flwr {args[0]} failed ({code}):\n{out}\n{err}")
        return payload

    def flwr_run(self, app: Path, connection: str, run_config: str, timeout: float = 120.0) -> int:
        """``flwr run <app> <connection> --run-config ...``: builds the FAB from ``app``,
        submits the run and returns its id (the run goes on in the SuperLink)."""
        payload = self._flwr_json("flwr-run", ["run", str(app), connection, "--run-config", run_config], timeout)
        if not payload.get("success"):
            raise RuntimeError(f"flwr run did not start a run: {payload}")
        return int(payload["run-id"])

    def register_node(self, connection: str, public_key: Path, name: str, timeout: float = 60.0) -> int:
        """``flwr supernode register <public key> <connection>``: the SuperLink admits the node
        holding the matching private key; returns the node id it will have."""
        payload = self._flwr_json("flwr-register", ["supernode", "register", str(public_key), connection,
                                                    "--name", name], timeout)
        return int(payload["node-id"])

    def run_status(self, connection: str, run_id: int, timeout: float = 60.0) -> str:
        """The run's status as ``flwr ls`` reports it, e.g. ``finished:completed``."""
        payload = self._flwr_json("flwr-ls", ["ls", connection, "--run-id", str(run_id)], timeout)
        return str(payload["runs"][0]["status"])

    def run_log(self, connection: str, run_id: int, timeout: float = 60.0) -> str:
        """The run's log as ``flwr log <run-id> <connection> --show`` prints it (the ServerApp's
        output is kept by the SuperLink, not written to the SuperLink's own log)."""
        code, out, err = self.run("flwr-log", ["flwr", "log", str(run_id), connection, "--show"],
                                  timeout=timeout, home="cli")
        return out if code == 0 else f"flwr log failed ({code}):\n{out}\n{err}"

    # waiting and stopping --------------------------------------------------------------
    def check_alive(self, *names: str) -> None:
        """Raise if one of the named long-running processes has exited."""
        for process in self.processes:
            if process.name in names and not process.running():
                raise RuntimeError(f"{process.name} exited with {process.popen.returncode}")

    def wait_until(self, condition, timeout: float, what: str, alive: tuple[str, ...] = (),
                   interval: float = 0.5) -> None:
        """Poll ``condition()`` until it is true; fail after ``timeout`` s or as soon as one of
        the ``alive`` processes exits."""
        deadline = time.monotonic() + timeout
        while True:
            self.remember_descendants()
            if condition():
                return
            self.check_alive(*alive)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(interval)

    def kill(self, process: Process) -> None:
        """SIGKILL a process and everything it started: a site that dies without a goodbye."""
        identities = [i for i in (_identity(pid) for pid in [process.popen.pid, *descendants(process.popen.pid)]) if i]
        for identity in identities:
            _signal(identity, signal.SIGKILL)
        process.popen.wait(timeout=10)

    def logs(self, lines: int = 40) -> str:
        """The tail of every process's log, for a failure report."""
        return "\n".join(f"----- {p.name} (exit {p.popen.poll()}) {p.log} -----\n{tail(p.log, lines)}"
                         for p in self.processes)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to every process we started and all their descendants, SIGKILL to those
        still there after ``grace`` seconds. A pid is signalled only while it still belongs
        to the process we saw (same start time), never to a later process that reuses it."""
        self.remember_descendants()
        known = set(self._known)
        for identity in known:
            _signal(identity, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for process in self.processes:
                process.popen.poll()  # reap our direct children
            if not any(_alive(identity) for identity in known):
                break
            time.sleep(0.2)
        for identity in known:
            _signal(identity, signal.SIGKILL)
        for process in self.processes:
            try:
                process.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
