"""SecAgg+ in Flower's simulation runtime: the aggregate equals plain FedAvg's within the
quantisation error, while what a site sends is masked (it does not resemble its update)."""

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedfms.federated import secure
from fedfms.federated.simulation import simulate
from fedfms.run.log import read_rows
from fedfms.run.state import load_latest

pytestmark = pytest.mark.slow


def test_secure_aggregation_matches_fedavg_and_hides_each_update(federation, tmp_path, run_config, monkeypatch):
    masked: list[np.ndarray] = []
    send = secure._CountingGrid.send_and_receive

    def keep_masked(self, messages, *, timeout=None):
        replies = send(self, messages, timeout=timeout)
        for reply in replies:
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if configs is not None and Key.MASKED_PARAMETERS in configs:
                masked.append(np.concatenate([bytes_to_ndarray(b).ravel() for b in configs[Key.MASKED_PARAMETERS]]))
        return replies

    monkeypatch.setattr(secure._CountingGrid, "send_and_receive", keep_masked)
    plain = run_config(federation, tmp_path / "plain", rounds=1)
    secured = run_config(federation, tmp_path / "secure", rounds=1, secure_aggregation=True)
    simulate(plain)
    results = simulate(secured)

    expected, _, _ = load_latest(plain.output_dir)
    got, _, _ = load_latest(secured.output_dir)
    step = 2 * secured.federation.secagg.clipping_range / secured.federation.secagg.quantization_range
    worst = max((got[k] - expected[k]).abs().max().item() for k in expected)
    assert worst <= 4 * step + 1e-6, f"SecAgg+ aggregate differs from FedAvg by {worst} (step {step})"

    assert len(masked) == 2  # one masked vector per training site, and nothing else the server could read
    assert not np.array_equal(masked[0], masked[1])
    # a site's quantised update would sit near the middle of the quantisation range (2**21 of 2**22);
    # masked, its values spread uniformly over the whole modulus (2**32)
    for vector in masked:
        shares = np.bincount((vector.astype(np.float64) / 2**32 * 16).astype(int), minlength=16) / vector.size
        assert np.abs(shares - 1 / 16).max() < 0.01, shares

    rows = read_rows(secured.output_dir)
    train = [r for r in rows if r["kind"] == "train"]
    assert {r["client"] for r in train} == {"site-A", "site-B"} and all(r["secure_aggregation"] for r in train)
    assert all(r["bytes_received"] > 0 for r in train)
    assert results["clients"]["site-C"]["role"] == "unseen"
