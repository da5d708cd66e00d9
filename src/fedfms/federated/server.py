"""The server side of a federated run, on a Flower ``Grid``: meet the nodes, then per round
train on the training clients through the chosen Flower strategy, screen and aggregate their
updates, evaluate the global model on every client, checkpoint; finally score the best round
(its logged evaluation, asking again only the clients it lacks).

Faults: a node that is offline when a round starts (nothing waits for it), whose reply is an
error, is missing at the round's timeout, or carries an update with NaN/Inf, the wrong tensors
or an outsized norm (under client-level DP also a norm of 0) is named in the log and left out
of that round; the round goes on if at least ``federation.min_train_clients`` (default: half of
the training clients, rounded up) valid updates came back, otherwise the run stops with the last
complete round on disk, ready to resume. A site whose SuperNode restarts (a new node id, or the
same one when its key is registered) takes part again from the next round.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedfms.config import RunConfig
from fedfms.errors import FedfmsError
from fedfms.federated import protocol as P
from fedfms.federated.exchange import exchange
from fedfms.federated.identity import CLIENTS_FILE, node_keys, previous_keys, refusal
from fedfms.federated.secure import secure_round
from fedfms.federated.strategy import make_strategy, restore_strategy_tensors, strategy_tensors, train_content
from fedfms.federated.wire import (
    UpdateRejected,
    check_update,
    decode_update,
    from_record,
    record_shapes,
    to_record,
    update_distance,
)
from fedfms.models import build_model, load_trainable_state, save_checkpoint, trainable_state
from fedfms.nnunet.fingerprint import SiteFingerprint
from fedfms.privacy.budget import RunPrivacy
from fedfms.run.best import BEST_MODEL
from fedfms.run.log import write_json
from fedfms.run.tracker import RESUME_CLI, RunTracker
from fedfms.train.planning import needs_plan, plan_from_fingerprints, with_plan
from fedfms.train.sites import client_info

logger = logging.getLogger("fedfms")


class FederationError(FedfmsError, RuntimeError):
    """The federation cannot go on (nodes missing, inconsistent, too few answers)."""


@dataclass(frozen=True)
class Node:
    """A connected SuperNode and the client (hospital) it serves."""

    node_id: int
    client: str
    num_train: int
    num_val: int
    num_samples: int
    class_names: list[str]
    digest: str = ""  # of its frozen weights
    key: str = ""  # fingerprint of the key its SuperNode authenticated with (see identity.py)
    privacy: dict[str, float] = field(default_factory=dict, compare=False)  # record-level epsilons it reported

    def label(self) -> str:
        return f"client {self.client!r} (node {self.node_id})"


def _config_record(config: RunConfig, **extra: Any) -> ConfigRecord:
    """The run configuration for the sites, without the coordinator's tracking section (a
    tracking server's address and credentials are none of a site's business)."""
    return ConfigRecord({P.RUN_CONFIG: config.model_dump_json(exclude={"tracking"}), **extra})


def _identify(grid: Grid, node_ids: list[int], config: RunConfig, timeout: float) -> tuple[list[Node], dict[int, str]]:
    """Ask ``node_ids`` who they are: the nodes that answered, and the errors of those whose
    answer was an error (by node id)."""
    messages = [Message(RecordDict({P.CONFIG: _config_record(config)}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in node_ids]
    nodes, errors = [], {}
    replies = exchange(grid, messages, timeout)
    keys = node_keys(grid)
    for src, reply in replies:
        if reply.has_error():
            errors[src] = reply.error.reason
            continue
        info = reply.content[P.INFO]
        nodes.append(Node(src, str(info["client"]), int(info["num-train"]), int(info["num-val"]),
                          int(info["num-samples"]), json.loads(str(info["class-names"])), str(info[P.FROZEN_DIGEST]),
                          keys.get(src, ""), {k: float(info[k]) for k in (P.EPSILON, P.EPSILON_NEXT) if k in info}))
    return nodes, errors


def _refuse(node: Node, reason: str, refused: set[int]) -> None:
    logger.warning("node %d claims client %r: refused, %s", node.node_id, node.client, reason)
    refused.add(node.node_id)


def meet_nodes(grid: Grid, config: RunConfig, expected: int, pinned: dict[str, str] | None = None) -> list[Node]:
    """Ask every node who it is; check names, classes and frozen weights agree. A node whose
    key is not the one its site is bound to (``pinned``, see :mod:`fedfms.federated.identity`)
    is refused and named in the log, and the server waits on for the site's own node."""
    pinned = pinned or {}
    timeout = config.federation.connect_timeout_s
    deadline = time.monotonic() + timeout
    nodes: list[Node] = []
    refused: set[int] = set()
    while len(nodes) < expected:
        met = {n.node_id for n in nodes} | refused
        new = [n for n in grid.get_node_ids() if n not in met]
        if not new:
            if time.monotonic() > deadline:
                raise FederationError(f"only {len(nodes)} of {expected} nodes connected and admitted within "
                                      f"{timeout:.0f} s" + (f" (refused: nodes {sorted(refused)})" if refused else ""))
            time.sleep(1)
            continue
        found, errors = _identify(grid, new, config, max(deadline - time.monotonic(), 1.0))
        if errors:
            raise FederationError("nodes failed to start: " + "; ".join(f"node {n}: {e}" for n, e in errors.items()))
        for node in found:
            if (reason := refusal(node, None, pinned, ())) is None:
                nodes.append(node)
            else:
                _refuse(node, reason, refused)
    names = [n.client for n in nodes]
    if len(set(names)) != len(names):
        raise FederationError(f"two nodes serve the same client: {sorted(names)}")
    wanted = config.data.clients
    if wanted is not None and sorted(wanted) != sorted(names):
        raise FederationError(f"connected clients {sorted(names)} differ from data.clients {sorted(wanted)}")
    if config.data.unseen is not None and config.data.unseen not in names:
        raise FederationError(f"unseen client {config.data.unseen!r} is not connected (clients: {sorted(names)})")
    if len({tuple(n.class_names) for n in nodes}) > 1:
        raise FederationError("clients disagree on classes: " + ", ".join(f"{n.client}={n.class_names}" for n in nodes))
    if len({n.digest for n in nodes}) > 1:
        raise FederationError("clients hold different frozen weights (same pretrained checkpoint and seed "
                              f"needed): { {n.client: n.digest for n in nodes} }")
    return sorted(nodes, key=lambda n: n.client)


def rejoin(grid: Grid, nodes: list[Node], config: RunConfig, timeout: float, ignored: set[int],
           pinned: dict[str, str]) -> list[Node]:
    """``nodes`` with the node ids of sites that came back: a connected node the run does not
    know (a restarted SuperNode without a registered key gets a new id) is asked who it is,
    and takes its site's place if it serves one of the run's clients with the same classes and
    frozen weights, and is allowed to serve it (:func:`fedfms.federated.identity.refusal`: the
    site's key; without keys, only once the site's node is gone). A node that answers with an
    error, as another client or is refused is named in the log and added to ``ignored``; one
    that does not answer in time is asked again next round."""
    known = {n.node_id for n in nodes} | ignored
    online = list(grid.get_node_ids())
    unknown = [n for n in online if n not in known]
    if not unknown:
        return nodes
    by_client = {n.client: n for n in nodes}
    came_back, errors = _identify(grid, unknown, config, timeout)
    ignored.update(errors)
    for node_id, error in errors.items():
        logger.warning("node %d did not say who it is: %s", node_id, error)
    for node in came_back:
        old = by_client.get(node.client)
        if old is None or (node.class_names, node.digest) != (old.class_names, old.digest):
            logger.warning("node %d serves client %r, not one of this run's clients with its classes and frozen "
                           "weights; it is left out", node.node_id, node.client)
            ignored.add(node.node_id)
            continue
        if (reason := refusal(node, old, pinned, online)) is not None:
            _refuse(node, reason, ignored)
            continue
        logger.info("%s rejoined as node %d", old.label(), node.node_id)
        by_client[node.client] = node
    return sorted(by_client.values(), key=lambda n: n.client)


def collect_fingerprints(grid: Grid, trainers: list[Node], config: RunConfig) -> list[SiteFingerprint]:
    """Every training client's nnU-Net fingerprint (for planning); all must answer. Each samples
    foreground pixels as nnU-Net would for the federation's number of training cases."""
    total = _config_record(config, **{P.TOTAL_CASES: sum(n.num_train for n in trainers)})
    messages = [Message(RecordDict({P.CONFIG: total}), dst_node_id=n.node_id,
                        message_type=P.QUERY_FINGERPRINT) for n in trainers]
    by_id = {n.node_id: n for n in trainers}
    fingerprints, errors = [], []
    for node_id, reply in exchange(grid, messages, config.federation.connect_timeout_s):
        if reply.has_error():
            errors.append(f"{by_id[node_id].label()}: {reply.error.reason}")
            continue
        fingerprints.append(SiteFingerprint.from_dict(json.loads(str(reply.content[P.INFO][P.FINGERPRINT]))))
    if errors or len(fingerprints) != len(trainers):
        raise FederationError("nnU-Net planning needs every training client's fingerprint: " + "; ".join(errors))
    return fingerprints


def _failure(failed: list[str], node: Node, what: str, reason: str) -> None:
    """Record (for the round's log row) and log that ``node`` failed at ``what``."""
    failed.append(f"{node.client} ({what}): {reason}")
    logger.warning("%s failed to %s: %s", node.label(), what, reason)


def _screen(replies: list[tuple[int, Message]], by_id: dict[int, Node],
            shapes: dict[str, tuple[int, ...]]) -> tuple[list[tuple[Node, Message]], list[str]]:
    """Keep the (node, reply) pairs that can be aggregated; describe the others."""
    valid, failed = [], []
    for node_id, reply in replies:
        node = by_id[node_id]
        if reply.has_error():
            _failure(failed, node, "train", reply.error.reason)
            continue
        try:
            check_update(reply.content[P.ARRAYS], shapes)
        except UpdateRejected as err:
            _failure(failed, node, "train", f"update rejected: {err}")
            continue
        valid.append((node, reply))
    return valid, failed


def _evaluate(grid: Grid, nodes: list[Node], arrays: ArrayRecord, config: RunConfig, round_: int,
              timeout: float | None) -> tuple[list[dict[str, Any]], list[str]]:
    """Scores of ``arrays`` on every client: validation split, or all data of the unseen client."""
    by_id = {n.node_id: n for n in nodes}
    cfg = _config_record(config, **{"server-round": round_})
    messages = [Message(RecordDict({P.ARRAYS: arrays, P.CONFIG: cfg}), dst_node_id=n.node_id,
                        message_type=MessageType.EVALUATE) for n in nodes]
    rows, failed = [], []
    replies = exchange(grid, messages, timeout)
    for node_id, reply in replies:
        node = by_id[node_id]
        if reply.has_error():
            _failure(failed, node, "evaluate", reply.error.reason)
            continue
        m = reply.content[P.METRICS]
        rows.append({
            "kind": "eval", "round": round_, "client": node.client,
            "role": "unseen" if node.client == config.data.unseen else "train",
            "split": str(reply.content[P.INFO]["split"]), "images": int(m[P.NUM_EXAMPLES]),
            **{key: _missing(m[wire]) for key, wire in (("dice", "dice"), ("iou", "iou"),
                                                        ("dice_per_class", "dice-per-class"),
                                                        ("iou_per_class", "iou-per-class"))},
            **({"cases": int(m["cases"])} if "cases" in m else {}),
        })
    _name_missing(nodes, {node_id for node_id, _ in replies}, failed, "evaluate")
    return sorted(rows, key=lambda r: r["client"]), failed


def _missing(value: Any) -> Any:
    """Undo the client's -1 for 'no images' (NaN does not travel in a MetricRecord)."""
    if isinstance(value, list):
        return [_missing(v) for v in value]
    return float("nan") if value == -1.0 else float(value)


def _screen_norms(valid: list[tuple[Node, Message]], arrays: ArrayRecord, max_ratio: float | None,
                  failed: list[str]) -> list[tuple[Node, Message]]:
    """Drop updates that moved more than ``max_ratio`` times the round's (lower) median distance
    from the global model: a broken or hostile site cannot blow up the average. The lower median
    keeps the rule meaningful with two sites."""
    if max_ratio is None or len(valid) < 2:
        return valid
    distances = [update_distance(reply.content[P.ARRAYS], arrays) for _, reply in valid]
    reference = statistics.median_low(distances)
    kept = []
    for (node, reply), distance in zip(valid, distances):
        if reference > 0 and distance > max_ratio * reference:
            _failure(failed, node, "train", f"update rejected: it moved the model {distance:.3g} (L2), over "
                                            f"{max_ratio:g} times the round's median {reference:.3g} "
                                            "(federation.max_update_ratio)")
        else:
            kept.append((node, reply))
    return kept


def _screen_unchanged(valid: list[tuple[Node, Message]], arrays: ArrayRecord,
                      failed: list[str]) -> list[tuple[Node, Message]]:
    """Under client-level DP, name the updates that left the model exactly as it was sent and
    leave them out: Flower's clipping scales each update by ``clipping_norm / its norm``, which
    an update of norm 0 turns into a division by zero. A site that changed nothing trained
    nothing; the round then lacks a site, which stops a client-level DP run naming it."""
    kept = []
    for node, reply in valid:
        if update_distance(reply.content[P.ARRAYS], arrays) == 0.0:
            _failure(failed, node, "train", "update rejected: it left the model unchanged, and client-level DP "
                                            "cannot clip an update of norm 0")
        else:
            kept.append((node, reply))
    return kept


def _name_missing(nodes: list[Node], answered: set[int], failed: list[str], what: str) -> None:
    for node in nodes:
        if node.node_id not in answered:
            _failure(failed, node, what, "no reply before the timeout")


def _too_few(round_: int, what: str, min_train: int, failed: list[str], resume_hint: str) -> FederationError:
    return FederationError(f"round {round_}: {what}, {min_train} required; failures: {'; '.join(failed)}. Once the "
                           f"clients are back, {resume_hint} (federation.min_train_clients sets how many are required)")


def _train_round(grid: Grid, strategy: FedAvg, trainers: list[Node], by_id: dict[int, Node], arrays: ArrayRecord,
                 shapes: dict[str, tuple[int, ...]], config: RunConfig, round_: int,
                 min_train: int, resume_hint: str
                 ) -> tuple[list[tuple[Node, Message]], list[dict[str, Any]], list[str], set[int]]:
    """Send the global ``arrays``, as the strategy configures them, to the training clients
    connected now and collect their updates: the valid (node, reply) pairs, one ``train`` log
    row each, the failures, and the ids of the nodes that did not answer (offline, or silent
    until the timeout; not asked to evaluate this round). Nothing waits for offline nodes: they
    are named, and fewer than ``min_train`` connected clients or valid updates stop the run."""
    online = set(grid.get_node_ids())
    sampled = [n for n in trainers if n.node_id in online]
    failed: list[str] = []
    for node in (n for n in trainers if n.node_id not in online):
        _failure(failed, node, "train", "not connected")
    if len(sampled) < min_train:
        raise _too_few(round_, f"{len(sampled)} training clients connected", min_train, failed, resume_hint)
    content = train_content(strategy, round_, arrays, _config_record(config))
    messages = [Message(content, dst_node_id=n.node_id, message_type=MessageType.TRAIN) for n in sampled]
    replies = exchange(grid, messages, config.federation.round_timeout_s)
    valid, rejected = _screen(replies, by_id, shapes)
    failed += rejected
    answered = {node_id for node_id, _ in replies}
    _name_missing(sampled, answered, failed, "train")
    received = {node.node_id: reply.content[P.ARRAYS].count_bytes() for node, reply in valid}  # as it travelled
    for _, reply in valid:
        reply.content[P.ARRAYS] = decode_update(reply.content[P.ARRAYS], arrays, config.federation.update_encoding)
    valid = _screen_norms(valid, arrays, config.federation.max_update_ratio, failed)
    if config.privacy.level == "client":
        valid = _screen_unchanged(valid, arrays, failed)
    if len(valid) < min_train:
        raise _too_few(round_, f"{len(valid)} valid updates", min_train, failed, resume_hint)
    rows = [{"kind": "train", "round": round_, "client": node.client,
             "loss": float(r.content[P.METRICS]["train-loss"]),
             "loss_per_epoch": [float(v) for v in r.content[P.METRICS]["train-loss-per-epoch"]],
             "samples": int(r.content[P.METRICS][P.NUM_EXAMPLES]),
             "seconds": float(r.content[P.METRICS]["train-seconds"]), "bytes_sent": arrays.count_bytes(),
             "bytes_received": received[node.node_id],
             **({"epsilon": float(r.content[P.METRICS][P.EPSILON]),
                 "epsilon_next": float(r.content[P.METRICS][P.EPSILON_NEXT])} if P.EPSILON in r.content[P.METRICS] else {}),
             } for node, r in valid]
    return valid, rows, failed, {node.node_id for node in trainers} - answered


def _secure_train_round(grid: Grid, trainers: list[Node], arrays: ArrayRecord, config: RunConfig, round_: int,
                        min_train: int, resume_hint: str
                        ) -> tuple[ArrayRecord, list[dict[str, Any]], list[str], set[int]]:
    """A FedAvg round through SecAgg+ (:mod:`fedfms.federated.secure`): the new global tensors,
    one ``train`` row per site that sent its masked update, the failures, and the silent nodes."""
    if len(trainers) < 2:
        raise FederationError(f"round {round_}: secure aggregation needs at least 2 training sites connected, "
                              f"{len(trainers)} are; once they are back, {resume_hint}")
    updated, rows, failed = secure_round(grid, trainers, arrays, config, round_)
    for line in failed:
        logger.warning("%s", line)
    if updated is None or len(rows) < min_train:
        raise FederationError(f"round {round_}: {len(rows)} masked updates, {min_train} required; failures: "
                              f"{'; '.join(failed)}. Once the sites are back, {resume_hint}")
    answered = {row["client"] for row in rows}
    return updated, rows, failed, {n.node_id for n in trainers if n.client not in answered}


def run_federation(grid: Grid, config: RunConfig, run_dir: Path, expected_nodes: int, resume: bool = False,
                   resume_hint: str = RESUME_CLI) -> dict[str, Any]:
    """Run (or resume) the federated training described by ``config``; returns ``results.json``.
    ``resume_hint`` says how this runtime resumes a run (see :class:`fedfms.run.tracker.RunTracker`)."""
    pinned = dict(config.federation.site_keys or (previous_keys(run_dir) if resume else {}))
    nodes = meet_nodes(grid, config, expected_nodes, pinned)
    if not any(n.key for n in nodes):
        logger.info("the nodes have no authenticated keys (the simulation runtime, or SuperNode authentication off): "
                    "a site is known by the name its node reports; see docs/deployment.md, 'Who may serve a site'")
    pinned = {n.client: n.key for n in nodes if n.key} | pinned
    trainers = [n for n in nodes if n.client != config.data.unseen]
    if not trainers:
        raise FederationError("no training client: every connected client is the unseen one")
    if len(trainers) == 1:
        logger.warning("only one training client (%s): this federation is local training at one site, "
                       "FedAvg has nothing to average", trainers[0].client)
    if needs_plan(config):
        config = with_plan(config, plan_from_fingerprints(config.model, collect_fingerprints(grid, trainers, config)))
    tracker = RunTracker(config, run_dir, kind="federated", resume=resume, resume_hint=resume_hint)
    logger.info("clients: %s", ", ".join(f"{n.client} ({'unseen' if n not in trainers else f'{n.num_train} train / {n.num_val} val'})"
                                          for n in nodes))
    write_nodes(run_dir, nodes, config)

    model = build_model(config.model, seed=config.train.seed)
    min_train = config.federation.min_train_clients or math.ceil(len(trainers) / 2)
    privacy = RunPrivacy(config, run_dir, resume)
    if privacy.level == "client":
        min_train = len(trainers)  # Flower's accounting composes every site's update in every round
    weights = P.UNIFORM_WEIGHT if privacy.level == "client" else P.NUM_EXAMPLES
    strategy = privacy.wrap(make_strategy(config.federation, min_train_nodes=min(min_train, len(trainers)),
                                          weighted_by_key=weights), len(trainers))
    if tracker.resumed is not None:
        global_state, saved_strategy = tracker.resumed
        restore_strategy_tensors(strategy, saved_strategy)
    else:
        global_state = trainable_state(model)
    arrays = to_record(global_state)
    shapes = record_shapes(arrays)
    timeout = config.federation.round_timeout_s
    traffic: dict[str, int] = {}
    ignored: set[int] = set()
    met: set[int] = set()
    for round_ in range(tracker.first_round, config.federation.rounds + 1):
        start = time.perf_counter()
        nodes = rejoin(grid, nodes, config, min(timeout or math.inf, config.federation.connect_timeout_s), ignored,
                       pinned)
        trainers = [n for n in nodes if n.client != config.data.unseen]
        for node in (n for n in trainers if n.node_id not in met):  # what a node said when it was met
            privacy.heard(node.client, node.privacy)
            met.add(node.node_id)
        if not privacy.next_round_allowed([n.client for n in trainers], round_):
            break
        by_id = {n.node_id: n for n in nodes}
        if config.federation.secure_aggregation:
            arrays, rows, failed, silent = _secure_train_round(grid, trainers, arrays, config, round_, min_train,
                                                               resume_hint)
        else:
            valid, rows, failed, silent = _train_round(grid, strategy, trainers, by_id, arrays, shapes, config,
                                                       round_, min_train, resume_hint)
            arrays, _ = strategy.aggregate_train(round_, [reply for _, reply in valid])
        for row in rows:
            privacy.heard(row["client"], {k.replace("_", "-"): v for k, v in row.items() if k.startswith("epsilon")})
        traffic = {"sent": rows[0]["bytes_sent"], "received": max(r["bytes_received"] for r in rows)}
        if arrays is None:
            raise FederationError(f"round {round_}: client-level DP aggregates every training site's update, but "
                                  f"{len(rows)} of {len(trainers)} came back; failures: {'; '.join(failed)}. Once the "
                                  f"sites are back, {resume_hint}")
        privacy.save()  # the noised aggregate exists: count it before it is sent anywhere
        if round_ % config.federation.evaluate_every == 0 or round_ == config.federation.rounds:
            for node in (n for n in nodes if n.node_id in silent):  # gone: asking again would wait once more
                _failure(failed, node, "evaluate", "skipped: no reply to this round's train message")
            eval_rows, eval_failed = _evaluate(grid, [n for n in nodes if n.node_id not in silent], arrays, config,
                                               round_, timeout)
            rows += eval_rows
            failed += eval_failed
        epsilon = privacy.epsilon()
        tracker.end_round(round_, from_record(arrays), strategy_tensors(strategy), rows,
                          time.perf_counter() - start, failed, {} if epsilon is None else {"epsilon": epsilon})

    best = tracker.best_trainable()
    final_rows = tracker.final_rows(sorted(n.client for n in nodes), lambda missing: _evaluate(
        grid, [n for n in nodes if n.client in missing], to_record(best), config, tracker.best_round or 0, timeout)[0])
    load_trainable_state(model, best)
    save_checkpoint(run_dir / BEST_MODEL, model, config.model, {"round": str(tracker.best_round),
                    "class_names": ",".join(nodes[0].class_names)})
    return tracker.finish(final_rows, nodes[0].class_names, {
        "trainable_parameters": sum(v.numel() for v in best.values()),
        "bytes_per_client_per_round": traffic,
        "clients_info": {n.client: client_info(n.client, n.num_train, n.num_val, n.num_samples, config.data.unseen)
                         for n in nodes},
        "privacy": privacy.summary(),
    })


def write_nodes(run_dir: Path, nodes: list[Node], config: RunConfig) -> None:
    """Who took part: client, role and sample counts (saved with the run)."""
    payload = [{"client": n.client, "role": "unseen" if n.client == config.data.unseen else "train",
                "train": n.num_train, "val": n.num_val, "samples": n.num_samples, "key": n.key} for n in nodes]
    write_json(run_dir / CLIENTS_FILE, payload)
