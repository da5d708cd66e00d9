"""The keys of the messages exchanged by the ServerApp and the ClientApps.

Every message carries the run configuration as JSON (``run-config``), so a hospital's node needs
no copy of the YAML: only its data folder (and, for pretrained runs, the SAM weights file).

- QUERY  server -> node: ``config`` {run-config}; reply ``info`` ConfigRecord (see
  :func:`fedfms.federated.site.describe`) plus ``frozen-digest``.
- QUERY ``query.fingerprint`` (nnU-Net runs only) server -> training node: ``config``
  {run-config}; reply ``info`` {fingerprint: JSON of the site's data fingerprint}.
- TRAIN  server -> node: ``arrays`` (global trainable tensors), ``config`` {run-config,
  server-round, [proximal-mu]}; reply ``arrays`` (local trainable tensors, or their float16
  difference to the global ones with ``federation.update_encoding: delta-fp16``), ``metrics``
  {num-examples (training samples: the FedAvg weight), uniform-weight (1: the weight of
  client-level DP, which averages sites equally), train-loss, train-seconds, train-steps, and
  with ``privacy.level: record`` the site's epsilon after this round and after the next one
  (epsilon, epsilon-next)}. A query reply carries the same two epsilons (the budget is checked
  before round 1).
- EVALUATE server -> node: ``arrays``, ``config`` {run-config, server-round}; the unseen
  client (``data.unseen`` of the run config) scores all its data, the others their validation
  split; reply ``metrics`` {num-examples, dice, iou, dice-per-class, iou-per-class} and
  ``info`` {split}.

A node that fails a message answers with Flower's error reply; its reason is a
:class:`SiteFailure` naming the site and the kind of error, nothing else (file paths, case
names and values stay in the site's own log).
"""

from fedfms.errors import FedfmsError

QUERY = "query"
QUERY_FINGERPRINT = "query.fingerprint"
TRAIN = "train"
EVALUATE = "evaluate"

RUN_CONFIG = "run-config"
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
INFO = "info"
FROZEN_DIGEST = "frozen-digest"
FINGERPRINT = "fingerprint"
TOTAL_CASES = "total-cases"
NUM_EXAMPLES = "num-examples"
EPSILON = "epsilon"
EPSILON_NEXT = "epsilon-next"
UNIFORM_WEIGHT = "uniform-weight"
SITE = "site"
"""Set by the site's own ClientApp on every message it handles, never taken from the server:
``secure-aggregation`` (whether the message came through SecAgg+)."""
VIA_SECURE_AGGREGATION = "secure-aggregation"


class SiteFailure(FedfmsError, RuntimeError):
    """A message failed at a site: names the site and the kind of error, nothing else."""
