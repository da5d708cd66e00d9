"""The ClientApp: what runs at each hospital. It answers four kinds of messages (see
:mod:`fedfms.federated.protocol` and :mod:`fedfms.federated.handlers`): who am I (query), the
nnU-Net fingerprint, one local round (train) and scores of the global model (evaluate). Images
and masks never leave the site, and neither do error details (:class:`~fedfms.federated.protocol.SiteFailure`).

In a real deployment Flower starts this module in a fresh ``flwr-clientapp`` process for each
message, so it imports Flower only and forwards the message to the node's warm site worker
(:mod:`fedfms.federated.worker`), which keeps torch, the model and the data warm across
messages. In the simulation runtime (and with the node config ``site-worker=false``) the
handlers run here, in the process that received the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from fedfms.federated import protocol as P
from fedfms.federated.packing import pack_arrays, unpack_arrays
from fedfms.federated.protocol import SiteFailure
from fedfms.federated.secure_site import is_secure, secure_train
from fedfms.federated.worker import ask_worker, node_label, uses_worker

app = ClientApp()
logger = logging.getLogger("fedfms")


def _reply_content(message_type: str, received: RecordDict, context: Context,
                   via_secure_aggregation: bool = False) -> RecordDict:
    """The reply content (tensors unpacked), from the warm site worker or this process."""
    unpack_arrays(received)
    received[P.SITE] = ConfigRecord({P.VIA_SECURE_AGGREGATION: via_secure_aggregation})  # the site's word, not the server's
    if uses_worker(context.node_config):
        return ask_worker(message_type, received, context)
    from fedfms.federated.handlers import handle  # torch and the models: imported only where they run

    return handle(message_type, received, context)


def _secure_content(content: RecordDict, context: Context) -> RecordDict:
    return _reply_content(MessageType.TRAIN, content, context, via_secure_aggregation=True)


def _guarded(msg: Message, context: Context, reply: Callable[[], Message]) -> Message:
    """``reply()``, with whatever fails logged at the site and sent as the site and the kind only."""
    try:
        return reply()
    except SiteFailure:
        raise
    except Exception as err:
        site = node_label(context)
        logger.exception("%s: the ClientApp could not answer the %s message", site, msg.metadata.message_type)
        raise SiteFailure(f"{site}: {type(err).__name__} in the ClientApp while handling {msg.metadata.message_type} "
                          "(details in the site's log)") from None


def answer(msg: Message, context: Context) -> Message:
    """The reply to ``msg``, computed by the warm site worker or in this process; tensors arrive
    and leave packed (:mod:`fedfms.federated.packing`). Whatever fails here is logged at the site;
    the error that Flower sends to the coordinator names the site and the kind of failure only
    (Flower would send the exception's text, which may hold local paths)."""
    def reply() -> Message:
        content = _reply_content(msg.metadata.message_type, msg.content, context)
        pack_arrays(content)
        return Message(content, reply_to=msg)

    return _guarded(msg, context, reply)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Describe this node's data and the digest of its frozen weights."""
    return answer(msg, context)


@app.query("fingerprint")
def fingerprint(msg: Message, context: Context) -> Message:
    """nnU-Net planning: the fingerprint of this site's training split (statistics, no pixels)."""
    return answer(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round from the global trainable tensors; the tensors (or their delta) back. A
    stage of a SecAgg+ round goes through Flower's SecAgg+ mod (:mod:`fedfms.federated.secure_site`)."""
    if is_secure(msg):
        return _guarded(msg, context, lambda: secure_train(msg, context, _secure_content, node_label(context)))
    return answer(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Scores of the global model on this site's data."""
    return answer(msg, context)
