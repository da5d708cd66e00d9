"""Record-level DP at a site (DP-SGD, one case = one record): noise really added, each case's
gradient clipped, epsilon equal to Opacus' accountant for the parameters and kept on disk."""

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer

from fedfms.models import build_model
from fedfms.privacy.accountant import RoundCost, SiteAccountant, site_accountant
from fedfms.privacy.dpsgd import (
    PrivacyError,
    _case_gradients,
    case_groups,
    check_delta,
    dp_local_round,
    private_step,
    round_cost,
)
from fedfms.train.losses import segmentation_loss
from fedfms.train.optimizer import trained_parameters
from fedfms.train.sites import load_site, site_inputs


def _private(config, tmp_path, **privacy):
    return config.with_overrides({"privacy.level": "record", "train.state_dir": str(tmp_path / "state"),
                                  **{f"privacy.{k}": v for k, v in privacy.items()}})


def _noised_update(model, per_case, noise_multiplier: float, clip: float, batch: int) -> torch.Tensor:
    """The update one DP-SGD step with plain SGD (lr 1) makes from these per-case gradients."""
    params = trained_parameters(model)
    start = {n: p.detach().clone() for n, p in params.items()}
    optimizer = DPOptimizer(torch.optim.SGD(list(params.values()), lr=1.0), noise_multiplier=noise_multiplier,
                            max_grad_norm=clip, expected_batch_size=batch)
    private_step(optimizer, params, per_case)
    update = torch.cat([(p.detach() - start[n]).flatten() for n, p in params.items()])
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(start[n])
    return update


def test_noise_of_the_calibrated_size_is_really_added_to_real_case_gradients(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run")
    site = load_site(federation / "site-A", config)
    model = build_model(config.model, seed=0).train()
    inputs = site_inputs(site, "train", model, config)
    params = trained_parameters(model)
    loss_fn = segmentation_loss(config.train.loss, 1, config.train.pos_weight)
    per_case = [_case_gradients(model, params, inputs, case, loss_fn, 4, torch.device("cpu"), None)[0]
                for case in case_groups([site])]
    plain = _noised_update(model, per_case, 0.0, 0.5, len(per_case))
    noisy = _noised_update(model, per_case, 2.0, 0.5, len(per_case))
    noise = noisy - plain
    assert plain.norm() <= 0.5 + 1e-5  # the clipped mean of the cases' gradients
    assert noise.std().item() == pytest.approx(2.0 * 0.5 / len(per_case), rel=0.05)  # sigma * C / batch
    assert abs(noise.mean().item()) < 0.05 * noise.std().item()


def test_each_case_gradient_is_clipped_before_the_sum_and_scaled_by_the_expected_batch():
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = DPOptimizer(torch.optim.SGD([weight], lr=1.0), noise_multiplier=0.0, max_grad_norm=0.5,
                            expected_batch_size=2)
    big, also_big, small = torch.full((4,), 100.0), torch.tensor([0.0, 0.0, 30.0, 40.0]), torch.full((4,), 0.01)
    private_step(optimizer, {"w": weight}, [{"w": big}, {"w": also_big}, {"w": small}])
    clipped = 0.5 * big / big.norm() + 0.5 * also_big / also_big.norm() + small  # small is within the bound
    assert torch.allclose(weight.detach(), -clipped / 2, atol=1e-5)


def test_a_step_that_sampled_no_case_still_adds_noise():
    weight = torch.nn.Parameter(torch.zeros(1000))
    optimizer = DPOptimizer(torch.optim.SGD([weight], lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0,
                            expected_batch_size=1)
    private_step(optimizer, {"w": weight}, [])
    assert 0.9 < weight.detach().std().item() < 1.1  # pure Gaussian noise of std sigma * C


def test_epsilon_grows_with_rounds_equals_opacus_and_survives_a_reload(tmp_path):
    path = tmp_path / "acc.json"
    cost = RoundCost(noise_multiplier=1.1, sample_rate=0.25, steps=4)
    accountant = SiteAccountant(path, delta=1e-5)
    reference = RDPAccountant()
    epsilons = []
    for round_ in (1, 2, 3):
        projected = accountant.epsilon_after(cost)
        epsilons.append(accountant.spend(cost, round_))
        for _ in range(cost.steps):
            reference.step(noise_multiplier=1.1, sample_rate=0.25)
        assert epsilons[-1] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
        assert projected == pytest.approx(epsilons[-1], rel=1e-9)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    again = SiteAccountant(path, delta=1e-5)  # a restarted site, a resumed run
    assert again.epsilon() == pytest.approx(epsilons[-1], rel=1e-12) and again.rounds == [1, 2, 3]


def test_a_dp_round_records_its_cost_in_the_sites_accountant(federation, tmp_path, run_config):
    config = _private(run_config(federation, tmp_path / "run"), tmp_path, noise_multiplier=1.0)
    site = load_site(federation / "site-A", config)
    model = build_model(config.model, seed=0)
    [epoch] = dp_local_round(model, [site], config, config.model, 1, site.name)
    cases = len(case_groups([site]))
    assert epoch.steps == cases  # one case per step in expectation: a local epoch is `cases` steps
    cost = round_cost(config, cases)
    assert cost == RoundCost(1.0, 1 / cases, cases)
    assert site_accountant(config, site.name).epsilon() == pytest.approx(
        SiteAccountant(tmp_path / "none.json", 1e-5).epsilon_after(cost), rel=1e-9)


def test_a_delta_not_below_one_over_the_cases_is_refused(federation, tmp_path, run_config):
    config = _private(run_config(federation, tmp_path / "run"), tmp_path, delta=0.25)
    with pytest.raises(PrivacyError, match=r"site-A: privacy.delta 0.25 is not below 1 / 4 training cases"):
        check_delta(config, 4, "site-A")
    check_delta(config, 3, "site-A")
