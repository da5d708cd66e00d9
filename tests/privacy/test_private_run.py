"""A record-level DP run end to end in Flower's simulation runtime: epsilon after every round in
metrics.jsonl (the largest over the sites, each as its own accountant computes it), the stop
before the round that would exceed the budget, and a resume that spends nothing again."""

import pytest
from opacus.accountants import RDPAccountant

from fedfms.federated.simulation import simulate
from fedfms.privacy.accountant import site_accountant
from fedfms.privacy.dpsgd import case_groups, round_cost
from fedfms.run.log import read_rows
from fedfms.train.sites import load_site

pytestmark = pytest.mark.slow
TRAINERS = ("site-A", "site-B")


def _expected(config, rounds: int) -> float:
    """The run's epsilon after ``rounds`` rounds: the largest of the sites' own."""
    epsilons = []
    for name in TRAINERS:
        cost = round_cost(config, len(case_groups([load_site(config.data.root / name, config)])))
        accountant = RDPAccountant()
        accountant.history = [(cost.noise_multiplier, cost.sample_rate, cost.steps)] * rounds
        epsilons.append(accountant.get_epsilon(config.privacy.delta))
    return max(epsilons)


def test_epsilon_per_round_the_budget_stop_and_a_resume_that_spends_nothing(federation, tmp_path, run_config):
    base = run_config(federation, tmp_path / "run", rounds=4).with_overrides(
        {"privacy.level": "record", "privacy.noise_multiplier": 1.0, "train.state_dir": str(tmp_path / "state")})
    target = (_expected(base, 2) + _expected(base, 3)) / 2  # two rounds fit, the third would not
    config = base.with_overrides({"privacy.target_epsilon": target})

    results = simulate(config)
    rows = read_rows(config.output_dir)
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    for row in rounds:
        assert row["epsilon"] == pytest.approx(_expected(config, row["round"]), rel=1e-6)
    assert {r["client"] for r in rows if r["kind"] == "train" and "epsilon" in r} == set(TRAINERS)
    assert results["privacy"] == {"level": "record", "epsilon": pytest.approx(_expected(config, 2), rel=1e-6),
                                  "delta": 1e-5, "target_epsilon": target, "noise_multiplier": 1.0,
                                  "stopped_by_budget": True}
    assert results["best_round"] in (1, 2) and "site-C" in results["clients"]  # scored as usual

    again = simulate(config.with_overrides({"federation.rounds": 5}), resume=True)
    assert again["privacy"]["stopped_by_budget"] and [r["round"] for r in read_rows(config.output_dir)
                                                       if r["kind"] == "round"] == [1, 2]
    assert all(site_accountant(config, name).rounds == [1, 2] for name in TRAINERS)  # nothing spent again
