"""The warm site worker: one long-lived process per SuperNode that answers its ClientApp's
messages, so that imports, the built model (pretrained weights read once) and the operating
system's cache of the site's files last from one message to the next.

Why: Flower's deployment runtime starts a fresh ``flwr-clientapp`` process for every message
(Flower 1.42 has no long-running ClientApp), which would import torch and transformers and
build the model again each time. The simulation runtime keeps each ClientApp in a Ray actor,
which is warm already, so there the handlers run in-process.

How: the ClientApp (:mod:`fedfms.federated.client_app`, which imports Flower only) forwards
each message to the node's worker and returns its reply. The first message starts the worker
(``python -m fedfms.federated.worker``, in its own session, output to its log file); later
ones find it by its Unix socket. The connection is authenticated by
:mod:`multiprocessing.connection`'s HMAC challenge with a random key kept in a file only this
user can read, in a folder only this user can enter (``$TMPDIR/fedfms-workers-<uid>``). Every
connection gets its own thread and deadlines: the challenge must be answered within
:data:`HANDSHAKE_S` and the request arrive within :data:`REQUEST_S`, so a connection that never
speaks (or stops half-way) is dropped and cannot hold up the node's real messages, which are
answered one at a time.
One worker serves one node: its address is derived from the node config, the code's location
(a new app version gets a new worker) and the ClientApp's parent process.

Lifetime: the worker exits when that parent (the SuperNode's SuperExec, which itself ends with
the SuperNode) is gone, or after ``site-worker-idle-s`` seconds without a message (900).
A worker that dies mid-message (killed, out of memory) fails that message with a
:class:`~fedfms.federated.protocol.SiteFailure` that names the site and the kind of failure
only (the worker's log, its path and its last lines are written to the SuperNode's own output,
never into the reply), and the next message starts a new one.

Node config (``flower-supernode --node-config``): ``site-worker=false`` answers every message
in the ``flwr-clientapp`` process itself, as without this module; ``site-worker-idle-s=N``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any

import psutil
from flwr.app import Context, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

import fedfms
from fedfms.errors import FedfmsError
from fedfms.federated.protocol import SiteFailure
from fedfms.run.log import console_logging

logger = logging.getLogger("fedfms")

WORKER_SETTING = "site-worker"
IDLE_SETTING = "site-worker-idle-s"
DEFAULT_IDLE_S = 900.0
START_TIMEOUT_S = 300.0
HANDSHAKE_S = 10.0  # the HMAC challenge, both ways
REQUEST_S = 120.0  # a request (the global tensors) over the local socket
MAX_SOCKET_PATH = 100  # Linux allows 107 bytes in a Unix socket's path
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def uses_worker(node_config: Mapping[str, Any]) -> bool:
    """Whether this node's messages go to its warm worker: on a deployment node (no simulation
    ``partition-id``) unless its node config says ``site-worker=false``."""
    if "partition-id" in node_config:
        return False
    value = node_config.get(WORKER_SETTING, True)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    if not isinstance(value, bool):
        raise FedfmsError(f"node config {WORKER_SETTING}={value!r}: expected true or false")
    return value


def idle_seconds(node_config: Mapping[str, Any]) -> float:
    """``site-worker-idle-s`` of the node config (default 900), a positive number."""
    value = node_config.get(IDLE_SETTING, DEFAULT_IDLE_S)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise FedfmsError(f"node config {IDLE_SETTING}={value!r}: expected a positive number of seconds")
    return seconds


def node_label(context: Context) -> str:
    """The site's data folder name (``data-dir``), else ``node <id>``: for messages that must
    not wait for the run configuration."""
    if "data-dir" in context.node_config:
        return Path(str(context.node_config["data-dir"])).name
    return f"node {context.node_id}"


def package_root() -> Path:
    """The folder that holds the ``fedfms`` package this process runs (the worker runs the same)."""
    return Path(fedfms.__file__).resolve().parents[1]


def _private_folder(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise FedfmsError(f"{path}: the site worker's folder must belong to this user and be closed to others "
                          f"(mode {stat.S_IMODE(info.st_mode):o}); remove it or set TMPDIR elsewhere")
    return path


@dataclass(frozen=True)
class WorkerAddress:
    """Where one node's worker listens (``<key>.sock``) and keeps its key, lock and log."""

    folder: Path
    key: str

    @classmethod
    def for_node(cls, node_config: Mapping[str, Any], parent_pid: int) -> WorkerAddress:
        identity = json.dumps({"node-config": dict(node_config), "code": str(package_root()), "parent": parent_pid},
                              sort_keys=True, default=str)
        folder = _private_folder(Path(tempfile.gettempdir()) / f"fedfms-workers-{os.getuid()}")
        address = cls(folder, hashlib.sha256(identity.encode()).hexdigest()[:20])
        if len(str(address.socket)) > MAX_SOCKET_PATH:
            raise FedfmsError(f"{address.socket}: too long for a Unix socket ({MAX_SOCKET_PATH} characters at most); "
                              "set TMPDIR to a shorter folder for the SuperNode")
        return address

    @property
    def socket(self) -> Path:
        return self.folder / f"{self.key}.sock"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.key}.log"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.key}.lock"

    @property
    def authkey_file(self) -> Path:
        return self.folder / f"{self.key}.auth"

    def authkey(self) -> bytes:
        """The connection key, made on first use: a file readable by this user only, written
        whole under a temporary name and linked into place, so no reader sees it half-written."""
        path = self.authkey_file
        if not path.exists():
            staged = path.with_name(f".{path.name}.{os.getpid()}")
            descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as stream:
                stream.write(secrets.token_hex(32))
            try:
                os.link(staged, path)
            except FileExistsError:  # another process made it first: use theirs
                pass
            finally:
                staged.unlink()
        return path.read_text().strip().encode()


# --- the ClientApp's side ---------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl  # POSIX only, like the worker's Unix socket (on Windows: site-worker=false)

    with path.open("a") as stream:
        fcntl.flock(stream, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream, fcntl.LOCK_UN)


@contextlib.contextmanager
def _deadline(connection: Connection, seconds: float) -> Iterator[None]:
    """Shut ``connection``'s socket down if the block has not finished within ``seconds``: a
    blocked read then ends (``EOFError``) instead of waiting for a peer that never speaks."""
    sock = socket.socket(fileno=os.dup(connection.fileno()))
    lock, finished = threading.Lock(), [False]

    def expire() -> None:
        with lock:
            if not finished[0]:
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            finished[0] = True
        timer.cancel()
        sock.close()


def _dial(address: WorkerAddress) -> Connection | None:
    """A connection to the worker listening at ``address``, authenticated both ways within
    :data:`HANDSHAKE_S`; ``None`` if none listens or it does not answer the handshake."""
    try:
        connection = Client(str(address.socket), family="AF_UNIX")
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError):  # none there, or one dying
        return None
    key = address.authkey()
    try:
        with _deadline(connection, HANDSHAKE_S):
            answer_challenge(connection, key)
            deliver_challenge(connection, key)
    except AuthenticationError:
        connection.close()
        raise FedfmsError(f"{address.socket}: the site worker there does not accept the key in "
                          f"{address.authkey_file}; stop that worker (its log: {address.log})") from None
    except (EOFError, OSError):  # a worker that is dying, or wedged: a new one takes its socket
        connection.close()
        logger.warning("%s: the site worker there did not complete the handshake within %.0f s; starting "
                       "another (the old one's log: %s)", address.socket, HANDSHAKE_S, address.log)
        return None
    return connection


def _log_locally(site: str, what: str, log: Path, lines: int = 20) -> None:
    """Write what went wrong with the worker, and the end of its log, to this process's own
    output (the SuperNode's, at the site); none of it goes into the reply."""
    try:
        ending = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        ending = "(no log)"
    logger.error("%s: %s; the site worker's log %s ends:\n%s", site, what, log, ending)


def _start(address: WorkerAddress, parent_pid: int, idle_s: float, site: str) -> Connection:
    """Start the worker and connect to it once it listens."""
    address.authkey()  # made before the worker reads it
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(package_root()), *filter(None, [env.get("PYTHONPATH")])])
    with address.log.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedfms.federated.worker", "--folder", str(address.folder), "--key", address.key,
             "--parent-pid", str(parent_pid), "--idle-s", str(idle_s)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    logger.info("%s: started the site worker, pid %d (log: %s)", site, process.pid, address.log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while (connection := _dial(address)) is None:
        if process.poll() is not None:
            _log_locally(site, f"the site worker exited with {process.returncode} while starting", address.log)
            raise SiteFailure(f"{site}: the site worker exited while starting (details in the site's log)")
        if time.monotonic() > deadline:
            process.kill()
            _log_locally(site, f"the site worker did not listen within {START_TIMEOUT_S:.0f} s", address.log)
            raise SiteFailure(f"{site}: the site worker did not start in time (details in the site's log)")
        time.sleep(0.05)
    return connection


def ask_worker(message_type: str, content: RecordDict, context: Context) -> RecordDict:
    """The reply content to one message, computed by this node's worker (started if none
    listens); the worker's log lines of that message are written to this process's stderr.
    Raises :class:`SiteFailure` if the message failed or the worker died while handling it."""
    console_logging()
    site = node_label(context)
    parent = os.getppid()
    address = WorkerAddress.for_node(context.node_config, parent)
    request = {"message-type": message_type, "content": recorddict_to_proto(content).SerializeToString(),
               "run-id": context.run_id, "node-id": context.node_id, "node-config": dict(context.node_config),
               "run-config": dict(context.run_config)}
    with _locked(address.lock):
        connection = _dial(address) or _start(address, parent, idle_seconds(context.node_config), site)
    with connection:
        try:
            connection.send(request)
            reply = connection.recv()
        except (EOFError, ConnectionError):
            _log_locally(site, f"the site worker died while handling {message_type}", address.log)
            raise SiteFailure(f"{site}: the site worker died while handling {message_type} "
                              "(details in the site's log)") from None
    for line in reply["log"]:
        print(line, file=sys.stderr, flush=True)
    if reply["error"] is not None:
        raise SiteFailure(reply["error"])
    return recorddict_from_proto(ProtoRecordDict.FromString(reply["content"]))


# --- the worker's side ------------------------------------------------------------------------

class _LinesOfOneMessage(logging.Handler):
    """Keeps the formatted log lines of the message being answered, for the ClientApp."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class _Activity:
    """How many connections are open (being authenticated, waiting or answered), and when the
    last one closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0
        self.since = time.monotonic()
        self.served = 0

    def opened(self) -> None:
        with self._lock:
            self.open += 1

    def closed(self) -> None:
        with self._lock:
            self.open -= 1
            self.since = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.open else time.monotonic() - self.since


def _unlink_own_socket(address: WorkerAddress, inode: int) -> None:
    """Remove the socket file if it is still this worker's (a successor may have bound the path)."""
    with contextlib.suppress(FileNotFoundError):
        if address.socket.stat().st_ino == inode:
            address.socket.unlink()


def _watch(parent_pid: int, idle_s: float, activity: _Activity, address: WorkerAddress, inode: int) -> None:
    """Exit the process when the parent is gone or nothing came for ``idle_s`` seconds. An idle
    worker first removes its socket, so no new ClientApp finds it, and exits only if nothing
    already connected arrived in the next second."""
    try:
        parent = psutil.Process(parent_pid)
    except psutil.NoSuchProcess:
        parent = None
    while True:
        orphaned = parent is None or not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE
        if not orphaned and activity.idle_for() > idle_s:
            _unlink_own_socket(address, inode)
            time.sleep(1.0)
        if orphaned or activity.idle_for() > idle_s:
            logger.info("site worker pid %d: %s after %d message(s); exiting", os.getpid(),
                        "its SuperNode is gone" if orphaned else f"idle for {idle_s:.0f} s", activity.served)
            _unlink_own_socket(address, inode)
            os._exit(0)
        time.sleep(1.0)


def _answer(request: dict[str, Any], activity: _Activity, handle: Callable[[str, RecordDict, Context], RecordDict],
            ) -> dict[str, Any]:
    lines = _LinesOfOneMessage()
    fedfms_logger = logging.getLogger("fedfms")
    fedfms_logger.addHandler(lines)
    context = Context(run_id=request["run-id"], node_id=request["node-id"], node_config=request["node-config"],
                      state=RecordDict(), run_config=request["run-config"])
    content, error, started = None, None, time.perf_counter()
    activity.served += 1
    try:
        received = recorddict_from_proto(ProtoRecordDict.FromString(request["content"]))
        content = recorddict_to_proto(handle(request["message-type"], received, context)).SerializeToString()
    except SiteFailure as failure:
        error = str(failure)
    except Exception as err:  # outside the handlers: reading or writing the message itself
        logger.exception("site worker: the %s message could not be answered", request["message-type"])
        error = f"{node_label(context)}: {type(err).__name__} in the site worker (details in its log)"
    finally:
        logger.info("site worker pid %d: message %d (%s) answered in %.2f s", os.getpid(), activity.served,
                    request["message-type"], time.perf_counter() - started)
        fedfms_logger.removeHandler(lines)
    return {"content": content, "error": error, "log": lines.lines}


def _serve_connection(connection: Connection, authkey: bytes, one_at_a_time: threading.Lock, activity: _Activity,
                      handle: Callable[[str, RecordDict, Context], RecordDict]) -> None:
    """Authenticate one connection and read its request, each within its deadline, then answer
    it when no other message is being answered."""
    try:
        with connection:
            try:
                with _deadline(connection, HANDSHAKE_S):
                    deliver_challenge(connection, authkey)
                    answer_challenge(connection, authkey)
                with _deadline(connection, REQUEST_S):
                    request = connection.recv()
            except (EOFError, OSError, AuthenticationError) as err:
                logger.warning("site worker: dropped a connection that did not authenticate and send its request "
                               "in time (%s)", type(err).__name__)
                return
            try:
                with one_at_a_time:
                    connection.send(_answer(request, activity, handle))
            except (EOFError, OSError) as err:
                logger.warning("site worker: the ClientApp left before its reply (%s)", err)
    finally:
        activity.closed()


def serve(address: WorkerAddress, parent_pid: int, idle_s: float) -> None:
    """Answer messages on ``address`` one at a time until :func:`_watch` ends the process; each
    connection is authenticated in its own thread (:func:`_serve_connection`)."""
    from fedfms.federated.handlers import handle  # torch and the models, imported before the first message

    console_logging()
    activity = _Activity()
    one_at_a_time = threading.Lock()
    authkey = address.authkey()
    address.socket.unlink(missing_ok=True)  # left by a worker that was killed; we hold the start lock
    with Listener(str(address.socket), family="AF_UNIX") as listener:  # authenticated per connection
        threading.Thread(target=_watch, args=(parent_pid, idle_s, activity, address, address.socket.stat().st_ino),
                         daemon=True).start()
        logger.info("site worker pid %d listening on %s", os.getpid(), address.socket)
        while True:
            try:
                connection = listener.accept()
            except OSError as err:
                logger.warning("site worker: could not accept a connection: %s", err)
                continue
            activity.opened()
            threading.Thread(target=_serve_connection, args=(connection, authkey, one_at_a_time, activity, handle),
                             name="fedfms-connection", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fedfms' warm site worker (started by the ClientApp)")
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S)
    args = parser.parse_args(argv)
    serve(WorkerAddress(args.folder, args.key), args.parent_pid, args.idle_s)


if __name__ == "__main__":
    main()
