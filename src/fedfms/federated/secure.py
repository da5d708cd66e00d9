"""Secure aggregation: one FedAvg round through Flower's SecAgg+ protocol
(:class:`~flwr.server.workflow.SecAggPlusWorkflow` here, :func:`~flwr.client.mod.secaggplus_mod`
at the sites, :mod:`fedfms.federated.client_app`), so the server learns only the weighted sum of
the sites' updates, never one site's.

What travels: each site sends its *update* (trained minus global tensors), which SecAgg+ clips
to ``[-clipping_range, clipping_range]`` per value (``federation.secagg``), quantises to
``quantization_range`` levels, multiplies by its weight (its training samples over the round's
total, so the masked sum is FedAvg's weighted mean) and masks with pairwise and private masks.
Four exchanges per round: keys (setup), key shares, masked updates (the training), unmask.
SecAgg+ tolerates sites that drop after the setup as long as ``reconstruction_threshold`` of
each site's key shares come back; a round that cannot be unmasked stops the run, ready to resume.

What it rules out: the server cannot screen individual updates (NaN/Inf, wrong tensors, the
update-norm screen of ``max_update_ratio``): each site checks its own update before masking it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedfms.config import RunConfig
from fedfms.federated import protocol as P

logger = logging.getLogger("fedfms")
TENSOR_NAMES = "tensor-names"


class _RecordingFedAvg(LegacyFedAvg):
    """Flower's (legacy) FedAvg, which the SecAgg+ workflow calls with the unmasked mean; it
    keeps the round's (proxy, FitRes) pairs for their metrics (loss, seconds, epsilon)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results: list = []

    def aggregate_fit(self, server_round, results, failures):
        self.results = list(results)
        return super().aggregate_fit(server_round, results, failures)


class _CountingGrid:
    """The grid, counting the bytes each node's replies carry (SecAgg+'s traffic per site)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.received: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if not reply.has_error():
                self.received[reply.metadata.src_node_id] = (self.received.get(reply.metadata.src_node_id, 0)
                                                             + _content_bytes(reply.content))
        return replies


def _content_bytes(content: RecordDict) -> int:
    total = sum(record.count_bytes() for record in content.array_records.values())
    for record in content.config_records.values():
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in items)
    return total


def secure_round(grid: Grid, trainers: list, arrays: ArrayRecord, config: RunConfig, round_: int,
                 ) -> tuple[ArrayRecord | None, list[dict[str, Any]], list[str]]:
    """One SecAgg+ FedAvg round over ``trainers`` (:class:`~fedfms.federated.server.Node`): the
    new global tensors (``None`` if the round could not be unmasked), one ``train`` row per site
    that sent its masked update, and the failures."""
    names = list(arrays.keys())
    counting = _CountingGrid(grid)
    manager = SimpleClientManager()
    proxies = {}
    for node in trainers:
        proxies[node.node_id] = GridClientProxy(node.node_id, grid, grid.run.run_id)
        manager.register(proxies[node.node_id])
    fit_config = {P.RUN_CONFIG: config.model_dump_json(), "server-round": round_, TENSOR_NAMES: json.dumps(names)}
    strategy = _RecordingFedAvg(fraction_fit=1.0, min_fit_clients=len(trainers), min_available_clients=len(trainers),
                                fraction_evaluate=0.0, on_fit_config_fn=lambda _: fit_config, accept_failures=True)
    sent = ArrayRecord({str(i): arrays[n] for i, n in enumerate(names)})  # the global tensors, in order
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: round_}),
                        MAIN_PARAMS_RECORD: sent})
    context = LegacyContext(Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=state, run_config={}),
                            config=ServerConfig(num_rounds=round_), strategy=strategy, client_manager=manager)
    secagg = config.federation.secagg
    workflow = SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=secagg.reconstruction_threshold,
                                  max_weight=float(sum(n.num_train for n in trainers)),
                                  clipping_range=secagg.clipping_range, quantization_range=secagg.quantization_range,
                                  timeout=config.federation.round_timeout_s)
    workflow(counting, context)
    by_id = {n.node_id: n for n in trainers}
    results = {int(proxy.node_id): fitres for proxy, fitres in strategy.results}
    failed = [f"{n.client} (train): no masked update in this SecAgg+ round" for n in trainers if n.node_id not in results]
    aggregated = context.state[MAIN_PARAMS_RECORD]
    if not results or aggregated is sent:
        answering = sorted(by_id[i].client for i in counting.received if i in by_id)
        return None, [], failed + [f"the SecAgg+ round could not be unmasked (sites answering: {answering})"]
    mean_update = aggregated.to_numpy_ndarrays()  # the sites' weighted mean update, in the order sent
    updated = ArrayRecord({n: Array(arrays[n].numpy() + delta.astype(arrays[n].numpy().dtype))
                           for n, delta in zip(names, mean_update)})
    rows = [{"kind": "train", "round": round_, "client": by_id[node_id].client,
             "loss": float(fitres.metrics.get("train-loss", float("nan"))),
             "samples": int(fitres.num_examples), "seconds": float(fitres.metrics.get("train-seconds", 0.0)),
             "bytes_sent": arrays.count_bytes(), "bytes_received": counting.received.get(node_id, 0),
             "secure_aggregation": True,
             **({"epsilon": float(fitres.metrics[P.EPSILON]), "epsilon_next": float(fitres.metrics[P.EPSILON_NEXT])}
                if P.EPSILON in fitres.metrics else {})}
            for node_id, fitres in sorted(results.items(), key=lambda item: by_id[item[0]].client)]
    return updated, rows, failed

