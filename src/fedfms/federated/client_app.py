"""The ClientApp: what runs at each hospital. It answers three kinds of messages (see
:mod:`fedfms.federated.protocol`): who am I (query), one local epoch (train) and scores of the
global model on my data (evaluate). Images and masks never leave this process, and neither do
error details: a failing message is logged in full here, and the coordinator only learns the
site and the kind of error (:class:`SiteFailure`)."""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedfms.config import RunConfig
from fedfms.errors import FedfmsError
from fedfms.federated import protocol as P
from fedfms.federated.site import (
    describe,
    frozen_digest,
    node_model_config,
    node_run_config,
    site_directory,
    site_model,
)
from fedfms.federated.wire import encode_update, from_record
from fedfms.models import load_trainable_state, trainable_state
from fedfms.run.log import console_logging
from fedfms.train.planning import fingerprint_site
from fedfms.train.rounds import local_round
from fedfms.train.sites import load_site, score_site

logger = logging.getLogger("fedfms")
app = ClientApp()
Handler = Callable[[Message, Context], Message]


class SiteFailure(FedfmsError, RuntimeError):
    """A message failed at a site: names the site and the kind of error, nothing else (file
    paths, case names and values stay in the site's own log)."""


def _site_name(msg: Message, context: Context) -> str:
    try:
        return site_directory(context, _run_config(msg).data).name
    except Exception:  # the failure may be in reading the configuration itself
        return f"node {context.node_id}"


def reported(handler: Handler) -> Handler:
    """Run ``handler``; on an error log it here with its traceback and raise :class:`SiteFailure`."""

    @functools.wraps(handler)
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:
            site = _site_name(msg, context)
            logger.exception("%s: the %s message failed", site, msg.metadata.message_type)
            raise SiteFailure(f"{site}: {type(err).__name__} while handling {msg.metadata.message_type} "
                              "(details in the site's log)") from None

    return run


def _run_config(msg: Message) -> RunConfig:
    console_logging()  # this site's progress (embeddings, local epochs) on its own stderr
    return RunConfig.model_validate_json(str(msg.content[P.CONFIG][P.RUN_CONFIG]))


def _prepare(msg: Message, context: Context):
    config = node_run_config(context, _run_config(msg))
    site = load_site(site_directory(context, config.data), config)
    model_cfg = node_model_config(context, config.model)
    model = site_model(model_cfg, config.train.seed)
    return config, site, model_cfg, model


@app.query()
@reported
def query(msg: Message, context: Context) -> Message:
    """Describe this node's data (counts, classes) and the digest of its frozen weights."""
    _, site, _, model = _prepare(msg, context)
    info = ConfigRecord({**describe(site), P.FROZEN_DIGEST: frozen_digest(model)})
    return Message(RecordDict({P.INFO: info}), reply_to=msg)


@app.query("fingerprint")
@reported
def fingerprint(msg: Message, context: Context) -> Message:
    """nnU-Net planning: nnU-Net's fingerprint of this site's training split (statistics, no
    pixels), sampled as for the federation's ``total-cases`` (see :mod:`fedfms.nnunet.fingerprint`)."""
    config = node_run_config(context, _run_config(msg))
    site = load_site(site_directory(context, config.data), config)
    stats = fingerprint_site(site, config.model, int(msg.content[P.CONFIG][P.TOTAL_CASES]))
    return Message(RecordDict({P.INFO: ConfigRecord({P.FINGERPRINT: json.dumps(stats.to_dict())})}), reply_to=msg)


@app.train()
@reported
def train(msg: Message, context: Context) -> Message:
    """Load the global trainable tensors, train one local round, send the tensors back."""
    config, site, model_cfg, model = _prepare(msg, context)
    start = from_record(msg.content[P.ARRAYS])
    load_trainable_state(model, start)
    round_ = int(msg.content[P.CONFIG]["server-round"])
    mu = float(msg.content[P.CONFIG].get("proximal-mu", 0.0))
    epochs = local_round(model, [site], config, model_cfg, round_, site.name, proximal_mu=mu)
    losses = [e.loss for e in epochs]
    seconds = sum(e.seconds for e in epochs)
    logger.info("%s round %d: loss per epoch %s, %d samples in %.1f s", site.name, round_,
                " ".join(f"{v:.4f}" for v in losses), sum(e.samples for e in epochs), seconds)
    metrics = MetricRecord({P.NUM_EXAMPLES: len(site.train), "train-loss": losses[-1], "train-loss-per-epoch": losses,
                            "train-seconds": seconds, "train-steps": sum(e.steps for e in epochs)})
    update = encode_update(trainable_state(model.cpu()), start, config.federation.update_encoding)
    return Message(RecordDict({P.ARRAYS: update, P.METRICS: metrics}), reply_to=msg)


@app.evaluate()
@reported
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global model: all data if this is the unseen client, else the validation split."""
    config, site, model_cfg, model = _prepare(msg, context)
    load_trainable_state(model, from_record(msg.content[P.ARRAYS]))
    scores = score_site(model, site, config, model_cfg)
    metrics = MetricRecord({
        P.NUM_EXAMPLES: scores["images"],
        "dice": _finite(scores["dice"]), "iou": _finite(scores["iou"]),
        "dice-per-class": [_finite(v) for v in scores["dice_per_class"]],
        "iou-per-class": [_finite(v) for v in scores["iou_per_class"]],
    })
    return Message(RecordDict({P.METRICS: metrics, P.INFO: ConfigRecord({"split": scores["split"]})}), reply_to=msg)


def _finite(value: float) -> float:
    """Scores of an empty split are NaN; they travel as -1 and are read back as missing."""
    return -1.0 if math.isnan(value) else value
