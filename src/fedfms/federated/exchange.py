"""Sending messages to the nodes and collecting their replies within a deadline that holds.

Flower's ``Grid.send_and_receive`` checks its timeout only between pulls, and one pull can
block for minutes: a reply whose upload stopped half-way (its site died mid-upload) is listed
by the SuperLink, and pulling its objects retries until the upload session expires (180 s in
Flower 1.42). Here every pull runs in a helper thread that the caller waits for only until the
deadline; a pull still blocked then is abandoned (its reply, if it ever completes, is dropped).

Tensors travel packed (:mod:`fedfms.federated.packing`): messages are packed here before they
are pushed and replies unpacked as they arrive; a reply whose packed tensors cannot be read
becomes an error reply of its node.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedfms.federated.packing import UnreadableArrays, pack_arrays, unpack_arrays

POLL_S = 0.5


def _pull(grid: Grid, message_ids: set[str], wait: float | None) -> list[Message] | None:
    """One ``grid.pull_messages``; ``None`` if it did not return within ``wait`` seconds."""
    box: list = []

    def pull() -> None:
        try:
            box.append(list(grid.pull_messages(message_ids)))
        except BaseException as err:  # handed to the waiting thread
            box.append(err)

    worker = threading.Thread(target=pull, name="fedfms-pull", daemon=True)
    worker.start()
    worker.join(wait)
    if not box:
        return None
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _unpacked(reply: Message, sent: Message) -> Message:
    """``reply`` with its tensors unpacked, or an error reply of its node if they are unreadable."""
    if reply.has_error():
        return reply
    try:
        unpack_arrays(reply.content)
    except UnreadableArrays as err:
        return Message(Error(code=ErrorCode.UNKNOWN, reason=f"unreadable reply: {err}"), reply_to=sent)
    return reply


def exchange(grid: Grid, messages: Iterable[Message], timeout: float | None) -> list[tuple[int, Message]]:
    """Send ``messages`` and pair every reply with the node its message went to, in the order
    of the messages (so that aggregation does not depend on arrival order); nodes without a
    complete reply ``timeout`` seconds after the call (``None``: wait for all) are absent.

    The messages' time-to-live is set to ``timeout``. A reply's ``src_node_id`` is not enough:
    when a node is gone, the SuperLink itself answers with an error (source: the SuperLink), so
    replies are matched through ``reply_to_message_id``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    messages = list(messages)
    if timeout is not None:
        for message in messages:  # a site that comes back late skips the rounds already over
            message.metadata.ttl = timeout
    packed: dict = {}  # the global model, sent to every node: packed once
    for message in messages:
        pack_arrays(message.content, packed)
    pending = {i for i in grid.push_messages(messages) if i}
    order = {m.metadata.message_id: i for i, m in enumerate(messages)}
    replies: list[Message] = []
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        pulled = _pull(grid, pending, left)
        if pulled is None:
            break
        for reply in pulled:
            pending.discard(reply.metadata.reply_to_message_id)
            replies.append(_unpacked(reply, messages[order[reply.metadata.reply_to_message_id]]))
        if pending:
            time.sleep(POLL_S if left is None else max(0.0, min(POLL_S, deadline - time.monotonic())))
    replies.sort(key=lambda r: order[r.metadata.reply_to_message_id])  # the messages' order, not arrival's
    return [(messages[order[r.metadata.reply_to_message_id]].metadata.dst_node_id, r) for r in replies]
