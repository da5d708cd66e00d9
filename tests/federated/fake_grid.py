"""A stand-in for Flower's ``Grid``, for the server's side of a round without any runtime."""

from __future__ import annotations

import threading

from flwr.app import Error, Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo


def _reply(answer: RecordDict | Error, request: Message) -> Message:
    if isinstance(answer, Error):
        return Message(error=answer, reply_to=request)
    return Message(content=answer, reply_to=request)


class FakeGrid:
    """Answers every message of the ``online`` nodes in ``answers`` at once (with that content,
    or that error); a node not ``online`` (a list the test may change) is not listed by
    ``get_node_ids`` and answers nothing, as a SuperNode that lost its connection. A pull that
    would return a reply of a node in ``stalled`` blocks until ``release`` is set, as Flower's
    pull of a half-uploaded reply does until the upload session expires.
    ``keys`` are the nodes' registered public keys (PEM), as an authenticating SuperLink knows them."""

    def __init__(self, online: list[int], answers: dict[int, RecordDict | Error], stalled: tuple[int, ...] = (),
                 keys: dict[int, bytes] | None = None) -> None:
        self.online, self.answers, self.stalled, self.keys = online, answers, stalled, keys or {}
        self.release = threading.Event()
        self.sent: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.online)

    def get_nodes(self) -> list[NodeInfo]:
        return [NodeInfo(node_id=n, public_key=self.keys.get(n, b"")) for n in self.online]

    def push_messages(self, messages):
        ids = []
        for n, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{len(self.sent)}-{n}"
            self.sent[message.metadata.message_id] = message
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        wanted = [self.sent[i] for i in message_ids]
        if any(m.metadata.dst_node_id in self.stalled for m in wanted):
            self.release.wait()
        return [_reply(self.answers[m.metadata.dst_node_id], m) for m in wanted
                if m.metadata.dst_node_id in self.answers and m.metadata.dst_node_id in self.online]
