"""What a hospital's node does with each kind of message (see :mod:`fedfms.federated.protocol`):
who am I (query), the nnU-Net fingerprint (query.fingerprint), one local round (train) and
scores of the global model on my data (evaluate).

Each handler maps the message's content and the node's :class:`~flwr.app.Context` to the
reply's content. They run in the ClientApp's own process (simulation) or in the node's warm
site worker (:mod:`fedfms.federated.worker`, a real deployment); either way through
:func:`handle`, which keeps error details at the site: a failure is logged in full here and
the coordinator only learns the site and the kind of error (:class:`SiteFailure`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict

from fedfms.config import RunConfig
from fedfms.federated import protocol as P
from fedfms.federated.protocol import SiteFailure
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
from fedfms.privacy.dpsgd import case_groups, check_delta, site_epsilon
from fedfms.privacy.policy import PolicyRefusal, broken_rule, site_rules
from fedfms.run.log import console_logging
from fedfms.train.planning import fingerprint_site
from fedfms.train.rounds import local_round
from fedfms.train.sites import load_site, score_site

logger = logging.getLogger("fedfms")
Handler = Callable[[RecordDict, Context], RecordDict]


def _run_config(content: RecordDict) -> RunConfig:
    console_logging()  # this site's progress (embeddings, local epochs) on its own stderr
    return RunConfig.model_validate_json(str(content[P.CONFIG][P.RUN_CONFIG]))


def _prepare(content: RecordDict, context: Context):
    config = node_run_config(context, _run_config(content))
    site = load_site(site_directory(context, config.data), config)
    model_cfg = node_model_config(context, config.model)
    model = site_model(model_cfg, config.train.seed)
    return config, site, model_cfg, model


def _epsilons(config: RunConfig, site) -> dict[str, float]:
    """This site's record-level epsilon so far and after one more round (none without DP-SGD)."""
    if config.privacy.level != "record":
        return {}
    check_delta(config, len(case_groups([site])), site.name)
    spent, after = site_epsilon(config, [site], site.name)
    return {P.EPSILON: spent, P.EPSILON_NEXT: after}


def query(content: RecordDict, context: Context) -> RecordDict:
    """Describe this node's data (counts, classes), the digest of its frozen weights and, with
    record-level DP, its epsilon."""
    config, site, _, model = _prepare(content, context)
    site_rules(context.node_config)  # a wrong rule value is this node's configuration error, found at once
    return RecordDict({P.INFO: ConfigRecord({**describe(site), P.FROZEN_DIGEST: frozen_digest(model),
                                             **_epsilons(config, site)})})


def fingerprint(content: RecordDict, context: Context) -> RecordDict:
    """nnU-Net planning: nnU-Net's fingerprint of this site's training split (statistics, no
    pixels), sampled as for the federation's ``total-cases`` (see :mod:`fedfms.nnunet.fingerprint`)."""
    config = node_run_config(context, _run_config(content))
    site = load_site(site_directory(context, config.data), config)
    stats = fingerprint_site(site, config.model, int(content[P.CONFIG][P.TOTAL_CASES]))
    return RecordDict({P.INFO: ConfigRecord({P.FINGERPRINT: json.dumps(stats.to_dict())})})


def _check_rules(content: RecordDict, context: Context, config: RunConfig, site) -> None:
    """Refuse the message if the run breaks one of this site's rules (:mod:`fedfms.privacy.policy`)."""
    rules = site_rules(context.node_config)
    if not rules:
        return
    secure = bool(content[P.SITE][P.VIA_SECURE_AGGREGATION]) if P.SITE in content else False
    after = _epsilons(config, site).get(P.EPSILON_NEXT)
    if (rule := broken_rule(rules, config, secure, after)) is not None:
        raise PolicyRefusal(f"{site.name}: refused by the site's rule {rule}")


def train(content: RecordDict, context: Context) -> RecordDict:
    """Load the global trainable tensors, train one local round, send the tensors back; refused
    if the run breaks one of this site's rules."""
    config, site, model_cfg, model = _prepare(content, context)
    _check_rules(content, context, config, site)
    start = from_record(content[P.ARRAYS])
    load_trainable_state(model, start)
    round_ = int(content[P.CONFIG]["server-round"])
    mu = float(content[P.CONFIG].get("proximal-mu", 0.0))
    epochs = local_round(model, [site], config, model_cfg, round_, site.name, proximal_mu=mu)
    losses = [_finite(e.loss) for e in epochs]  # NaN: a DP-SGD epoch that sampled no case
    seconds = sum(e.seconds for e in epochs)
    logger.info("%s round %d: loss per epoch %s, %d samples in %.1f s", site.name, round_,
                " ".join(f"{v:.4f}" for v in losses), sum(e.samples for e in epochs), seconds)
    metrics = MetricRecord({P.NUM_EXAMPLES: len(site.train), P.UNIFORM_WEIGHT: 1, "train-loss": losses[-1],
                            "train-loss-per-epoch": losses, "train-seconds": seconds,
                            "train-steps": sum(e.steps for e in epochs), **_epsilons(config, site)})
    update = encode_update(trainable_state(model.cpu()), start, config.federation.update_encoding)
    return RecordDict({P.ARRAYS: update, P.METRICS: metrics})


def evaluate(content: RecordDict, context: Context) -> RecordDict:
    """Score the global model: all data if this is the unseen client, else the validation split."""
    config, site, model_cfg, model = _prepare(content, context)
    load_trainable_state(model, from_record(content[P.ARRAYS]))
    scores = score_site(model, site, config, model_cfg)
    metrics = MetricRecord({
        P.NUM_EXAMPLES: scores["images"],
        "dice": _finite(scores["dice"]), "iou": _finite(scores["iou"]),
        "dice-per-class": [_finite(v) for v in scores["dice_per_class"]],
        "iou-per-class": [_finite(v) for v in scores["iou_per_class"]],
        **({"cases": scores["cases"]} if "cases" in scores else {}),
    })
    return RecordDict({P.METRICS: metrics, P.INFO: ConfigRecord({"split": scores["split"]})})


def _finite(value: float) -> float:
    """Scores of an empty split are NaN; they travel as -1 and are read back as missing."""
    return -1.0 if math.isnan(value) else value


HANDLERS: dict[str, Handler] = {
    P.QUERY: query,
    P.QUERY_FINGERPRINT: fingerprint,
    P.TRAIN: train,
    P.EVALUATE: evaluate,
}
"""Message type (Flower's ``message_type``, ``<kind>[.<action>]``) -> its handler."""


def site_name(content: RecordDict, context: Context) -> str:
    """The site's folder name for error messages, else ``node <id>``."""
    try:
        return site_directory(context, _run_config(content).data).name
    except Exception:  # the failure may be in reading the configuration itself
        return f"node {context.node_id}"


def handle(message_type: str, content: RecordDict, context: Context) -> RecordDict:
    """The reply content to a message of ``message_type``; on an error, log it here with its
    traceback and raise :class:`SiteFailure` naming the site and the kind of error only."""
    try:
        return HANDLERS[message_type](content, context)
    except SiteFailure as failure:  # written to be sent: the site and a rule or setting, nothing else
        logger.warning("the %s message was not answered: %s", message_type, failure)
        raise
    except Exception as err:
        site = site_name(content, context)
        logger.exception("%s: the %s message failed", site, message_type)
        raise SiteFailure(f"{site}: {type(err).__name__} while handling {message_type} "
                          "(details in the site's log)") from None
