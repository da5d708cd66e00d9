"""A site's side of SecAgg+ (see :mod:`fedfms.federated.secure`): Flower's
:func:`~flwr.client.mod.secaggplus_mod` runs the protocol's four stages in the ClientApp
process (its keys and shares live in the node's Flower context) and calls this module's
:func:`masked_round_source` at the stage that needs the update. That trains one local round as a
plain train message would, checks the update (what the server can no longer check: finite
values), clips each value to the protocol's range (counted in the site's own log) and hands
``trained - global`` to the mod, which weights, quantises and masks it.

Imports Flower and NumPy only, like the rest of the ClientApp process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key
from flwr.compat.common import recorddict_compat as compat

from fedfms.federated import protocol as P
from fedfms.federated.protocol import SiteFailure

logger = logging.getLogger("fedfms")
TENSOR_NAMES = "tensor-names"
Train = Callable[[RecordDict, Context], RecordDict]


def is_secure(msg: Message) -> bool:
    """Whether ``msg`` is a stage of a SecAgg+ round."""
    return RECORD_KEY_CONFIGS in msg.content.config_records


def secure_train(msg: Message, context: Context, train: Train, site: str) -> Message:
    """Answer one SecAgg+ stage; ``train(content, context)`` is the site's plain local round
    (content and reply in fedfms' format, tensors unpacked)."""
    return secaggplus_mod(msg, context, lambda m, c: _masked_round_source(m, c, train, site))


def _masked_round_source(msg: Message, context: Context, train: Train, site: str) -> Message:
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    names = json.loads(str(fitins.config[TENSOR_NAMES]))
    start = dict(zip(names, parameters_to_ndarrays(fitins.parameters), strict=True))
    content = RecordDict({P.ARRAYS: ArrayRecord({n: Array(v) for n, v in start.items()}),
                          P.CONFIG: ConfigRecord({P.RUN_CONFIG: str(fitins.config[P.RUN_CONFIG]),
                                                  "server-round": int(fitins.config["server-round"])})})
    reply = train(content, context)
    trained = {n: a.numpy() for n, a in reply[P.ARRAYS].items()}
    limit = float(context.state.config_records[RECORD_KEY_STATE][Key.CLIPPING_RANGE])  # set by the setup stage
    update = [(trained[n].astype(np.float64) - start[n]).astype(np.float32) for n in names]
    if not all(np.isfinite(u).all() for u in update):
        raise SiteFailure(f"{site}: the update holds NaN or Inf; it was not sent")
    clipped = sum(int((np.abs(u) > limit).sum()) for u in update)
    if clipped:
        logger.warning("%s: %d of %d update values exceed the SecAgg+ range +-%g and are clipped (raise "
                       "federation.secagg.clipping_range if this is frequent)", site, clipped,
                       sum(u.size for u in update), limit)
    metrics = reply[P.METRICS]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.clip(u, -limit, limit) for u in update]),
                    int(metrics[P.NUM_EXAMPLES]), scalars)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

