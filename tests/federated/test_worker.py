"""The warm site worker of a deployment node: the real ClientApp forwards real Flower messages to
a real worker process over its Unix socket (as in ``flwr-clientapp``), which stays up between
messages, reports failures like the in-process handlers, and goes away when it dies, idles or
loses its SuperNode."""

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedfms.errors import FedfmsError
from fedfms.federated import protocol as P
from fedfms.federated.client_app import app
from fedfms.federated.packing import unpack_arrays
from fedfms.federated.protocol import SiteFailure
from fedfms.federated.wire import from_record, to_record
from fedfms.federated.worker import HANDSHAKE_S, WorkerAddress, idle_seconds, uses_worker
from fedfms.models import build_model, trainable_state

pytestmark = pytest.mark.usefixtures("task_identity")
WORKER_LINE = re.compile(r"site worker pid (\d+): message (\d+) \((\S+)\)")


@pytest.fixture
def worker_dir(monkeypatch):
    """A short private temporary folder (Unix socket paths are short), and every worker started
    under it stopped at the end."""
    folder = Path(tempfile.mkdtemp(prefix="fw"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    for process in _workers(folder):
        process.kill()


def _workers(folder: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "fedfms.federated.worker" in command and str(folder) in " ".join(command):
            found.append(process)
    return found


def _node(data_dir: Path, **settings) -> dict:
    return {"data-dir": str(data_dir), **settings}


def _send(kind: str, config, node_config: dict, arrays=None) -> Message:
    content = RecordDict({P.CONFIG: ConfigRecord({P.RUN_CONFIG: config.model_dump_json(), "server-round": 1})})
    if arrays is not None:
        content[P.ARRAYS] = arrays
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})
    reply = app(Message(content, dst_node_id=5, message_type=kind), context)
    unpack_arrays(reply.content)  # as the server's exchange does
    return reply


def _answered(stderr: str) -> list[tuple[int, int, str]]:
    """(worker pid, message number, message type) of every message a worker answered."""
    return [(int(pid), int(n), kind) for pid, n, kind in WORKER_LINE.findall(stderr)]


def test_one_warm_worker_answers_every_message_of_a_node_as_the_handlers_would(
        federation, tmp_path, run_config, worker_dir, capfd):
    config = run_config(federation, tmp_path / "run")
    node = _node(federation / "site-A", **{"site-worker-idle-s": 120})
    start = to_record(trainable_state(build_model(config.model, seed=0)))

    replies = [_send(MessageType.QUERY, config, node), _send(MessageType.TRAIN, config, node, start),
               _send(MessageType.EVALUATE, config, node, start)]
    stderr = capfd.readouterr().err
    answered = _answered(stderr)
    assert [kind for _, _, kind in answered] == ["query", "train", "evaluate"]
    assert len({pid for pid, _, _ in answered}) == 1 and [n for _, n, _ in answered] == [1, 2, 3]
    assert stderr.count("started the site worker") == 1
    assert "site-A round 1: loss per epoch" in stderr  # the site's own progress reaches its SuperNode's output
    [folder] = worker_dir.iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [stat.S_IMODE(f.stat().st_mode) for f in folder.glob("*.auth")] == [0o600]

    in_process = {"site-worker": False}
    expected = [_send(MessageType.QUERY, config, {**node, **in_process}),
                _send(MessageType.TRAIN, config, {**node, **in_process}, start),
                _send(MessageType.EVALUATE, config, {**node, **in_process}, start)]
    assert replies[0].content[P.INFO]["frozen-digest"] == expected[0].content[P.INFO]["frozen-digest"]
    assert replies[0].content[P.INFO]["num-train"] == expected[0].content[P.INFO]["num-train"]
    trained, reference = from_record(replies[1].content[P.ARRAYS]), from_record(expected[1].content[P.ARRAYS])
    assert set(trained) == set(reference)
    assert any(not torch.equal(trained[k], from_record(start)[k]) for k in trained), "the worker trained nothing"
    assert all(torch.allclose(trained[k], reference[k], atol=1e-5) for k in trained)
    assert replies[2].content[P.METRICS]["dice"] == pytest.approx(expected[2].content[P.METRICS]["dice"], abs=1e-6)
    assert [r.metadata.message_type for r in replies] == [MessageType.QUERY, MessageType.TRAIN, MessageType.EVALUATE]


def test_a_failure_at_the_worker_names_the_site_only_and_the_worker_stays(
        federation, tmp_path, run_config, worker_dir, capfd):
    config = run_config(federation, tmp_path / "run")
    node = _node(federation / "site-A")
    start = to_record(trainable_state(build_model(config.model, seed=0)))
    for path in (federation / "site-A" / "images").iterdir():
        path.write_bytes(b"not an array")
    with pytest.raises(SiteFailure) as failure:
        _send(MessageType.TRAIN, config, node, start)
    message = str(failure.value)
    assert message.startswith("site-A: ") and "while handling train" in message and str(tmp_path) not in message
    _send(MessageType.QUERY, config, node)  # the manifest is intact: the same worker answers
    answered = _answered(capfd.readouterr().err)
    assert [(n, kind) for _, n, kind in answered] == [(1, "train"), (2, "query")]
    assert len({pid for pid, _, _ in answered}) == 1


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_message_fails_that_message_and_the_next_one_starts_a_new_worker(
        federation, tmp_path, run_config, worker_dir, capfd):
    slow = run_config(federation, tmp_path / "run").with_overrides({"train.local_epochs": 400})
    node = _node(federation / "site-A")
    start = to_record(trainable_state(build_model(slow.model, seed=0)))
    outcome: dict = {}

    def train() -> None:
        try:
            _send(MessageType.TRAIN, slow, node, start)
        except Exception as err:
            outcome["error"] = err

    sender = threading.Thread(target=train)
    sender.start()
    deadline = time.monotonic() + 120
    while not (logs := list(worker_dir.rglob("*.log"))) or "listening" not in logs[0].read_text():
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.1)
    [worker] = _workers(worker_dir)
    while len(worker.net_connections(kind="unix")) < 2:  # listening, and the ClientApp's connection accepted
        assert time.monotonic() < deadline, "the ClientApp never connected"
        time.sleep(0.05)
    idle = sum(worker.cpu_times()[:2])
    while sum(worker.cpu_times()[:2]) < idle + 1.0:  # the message has arrived and is training (400 epochs take far longer)
        assert time.monotonic() < deadline, "the worker never started training"
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)  # gone: a dial to its socket while it dies is reset (worker._dial does not expect that)
    sender.join(timeout=60)
    assert isinstance(outcome.get("error"), SiteFailure), outcome
    reason = str(outcome["error"])
    assert reason == "site-A: the site worker died while handling train (details in the site's log)"
    stderr = capfd.readouterr().err  # the site's own output keeps the details: the log's path and its end
    assert "the site worker died while handling train; the site worker's log" in stderr
    assert str(worker_dir) in stderr and "listening on" in stderr

    _send(MessageType.QUERY, slow, node)
    [(new_pid, number, kind)] = _answered(capfd.readouterr().err)
    assert new_pid != worker.pid and (number, kind) == (1, "query")


def test_a_failure_outside_the_handlers_tells_the_coordinator_only_the_site_and_the_kind(
        federation, tmp_path, run_config, worker_dir, capfd):
    folder = worker_dir / f"fedfms-workers-{os.getuid()}"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # open to others: the worker refuses to keep its key there
    with pytest.raises(SiteFailure) as failure:
        _send(MessageType.QUERY, run_config(federation, tmp_path / "run"), _node(federation / "site-A"))
    assert str(failure.value) == ("site-A: FedfmsError in the ClientApp while handling query "
                                  "(details in the site's log)")
    assert str(folder) in capfd.readouterr().err  # the path stays in the site's own output


def test_a_connection_that_never_speaks_holds_up_no_message_and_is_dropped(
        federation, tmp_path, run_config, worker_dir):
    config = run_config(federation, tmp_path / "run")
    node = _node(federation / "site-A")
    _send(MessageType.QUERY, config, node)  # the worker is up
    [sock_path] = worker_dir.rglob("*.sock")
    [log] = worker_dir.rglob("*.log")
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(sock_path))
    try:
        started = time.monotonic()
        _send(MessageType.QUERY, config, node)
        assert time.monotonic() - started < HANDSHAKE_S, "a silent connection held up the node's message"
        deadline = time.monotonic() + HANDSHAKE_S + 20
        while "dropped a connection that did not authenticate" not in log.read_text():
            assert time.monotonic() < deadline, "the silent connection was never dropped"
            time.sleep(0.2)
        silent.settimeout(5)
        received = b""
        while chunk := silent.recv(1024):  # the worker's challenge, then its side closed (a timeout fails)
            received += chunk
        assert b"#CHALLENGE#" in received
    finally:
        silent.close()


def test_a_worker_exits_when_idle(federation, tmp_path, run_config, worker_dir):
    node = _node(federation / "site-A", **{"site-worker-idle-s": 1})
    _send(MessageType.QUERY, run_config(federation, tmp_path / "run"), node)
    [worker] = _workers(worker_dir)
    worker.wait(timeout=30)
    assert not list(worker_dir.rglob("*.sock"))


def test_a_worker_exits_when_the_process_that_started_its_clientapp_is_gone(federation, tmp_path, run_config,
                                                                            worker_dir):
    """``sh`` stands for the SuperNode's SuperExec: it starts a ClientApp process (one message,
    then it exits) and stays; once ``sh`` is gone the worker follows."""
    config_path = tmp_path / "run.json"
    config_path.write_text(run_config(federation, tmp_path / "run").model_dump_json())
    clientapp = textwrap.dedent(f"""
        import tempfile
        tempfile.tempdir = {str(worker_dir)!r}
        from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
        from flwr.supercore.task_identity import TaskIdentity
        from fedfms.federated.client_app import app
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        content = RecordDict({{"config": ConfigRecord({{"run-config": open({str(config_path)!r}).read()}})}})
        context = Context(run_id=1, node_id=5, node_config={{"data-dir": {str(federation / 'site-A')!r}}},
                          state=RecordDict(), run_config={{}})
        app(Message(content, dst_node_id=5, message_type=MessageType.QUERY), context)
    """)
    superexec = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "$0" && sleep 600', clientapp])
    deadline = time.monotonic() + 120
    while not (workers := _workers(worker_dir)) or _clientapp_running(superexec.pid):
        assert superexec.poll() is None and time.monotonic() < deadline, "the ClientApp did not answer"
        time.sleep(0.2)
    [worker] = workers
    assert worker.is_running()
    os.kill(superexec.pid, signal.SIGKILL)
    superexec.wait()
    worker.wait(timeout=30)


def _clientapp_running(shell_pid: int) -> bool:
    return any(child.name() != "sleep" for child in psutil.Process(shell_pid).children())


def test_node_settings_of_the_worker_are_checked(tmp_path, monkeypatch):
    assert uses_worker({"data-dir": "/d"}) and not uses_worker({"data-dir": "/d", "site-worker": False})
    assert not uses_worker({"partition-id": 0, "num-partitions": 2})  # the simulation runtime: in-process
    assert not uses_worker({"site-worker": "false"})
    with pytest.raises(FedfmsError, match="site-worker='maybe'"):
        uses_worker({"site-worker": "maybe"})
    assert idle_seconds({}) == 900 and idle_seconds({"site-worker-idle-s": 5}) == 5
    with pytest.raises(FedfmsError, match="site-worker-idle-s=0"):
        idle_seconds({"site-worker-idle-s": 0})

    shared = tmp_path / "t"
    (shared / f"fedfms-workers-{os.getuid()}").mkdir(parents=True, mode=0o777)
    (shared / f"fedfms-workers-{os.getuid()}").chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    with pytest.raises(FedfmsError, match="closed to others"):
        WorkerAddress.for_node({"data-dir": "/d"}, 1)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / ("x" * 90)))
    with pytest.raises(FedfmsError, match="too long for a Unix socket"):
        WorkerAddress.for_node({"data-dir": "/d"}, 1)
