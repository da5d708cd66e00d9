"""Record-level differential privacy at a site: DP-SGD in which the protected record is one
*case* (a patient, a volume), not one slice.

A patient contributes many slices, so a guarantee per slice would understate what a patient
risks. Here each step samples cases, not slices: every training case joins the step's batch
independently with probability ``q = cases_per_step / cases`` (Poisson sampling, drawn from the
operating system's randomness, which the server never sees). A case's gradient is that of the
mean loss over all its slices. Opacus' :class:`~opacus.optimizers.DPOptimizer` then clips each
case's gradient to ``max_grad_norm``, sums them, adds Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` and divides by ``cases_per_step``; Adam steps on the result.
A local epoch is ``ceil(cases / cases_per_step)`` steps. The site's accountant
(:mod:`fedfms.privacy.accountant`, Opacus' RDP) counts those steps at rate ``q``, so its epsilon
is per case. The per-case gradients are computed one case at a time (no per-sample hooks), so
every fine-tuning mode works: ``decoder`` on cached embeddings (cheap) and ``msa`` (the encoder
runs forward and backward for every case of every step).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence

import torch
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from fedfms.config import ModelConfig, RunConfig
from fedfms.federated.protocol import SiteFailure
from fedfms.privacy.accountant import RoundCost, site_accountant
from fedfms.train.device import autocast, resolve_device, resolve_precision
from fedfms.train.local import EpochResult
from fedfms.train.losses import segmentation_loss
from fedfms.train.optimizer import kept_state, local_optimizer, trained_parameters
from fedfms.train.sites import Site, site_inputs
from fedfms.train.step import predict_batch


class PrivacyError(SiteFailure, ValueError):
    """A run's privacy settings cannot be honoured for this site's data or model (the message
    names the setting and counts only, so a site may send it to the coordinator)."""


def case_groups(sites: Sequence[Site]) -> list[list[int]]:
    """Indices into the concatenated training splits of ``sites``, grouped by case (a case
    belongs to one site: ids are unique per site)."""
    groups: dict[tuple[str, str], list[int]] = {}
    offset = 0
    for site in sites:
        for position, sample in enumerate(site.train):
            groups.setdefault((site.name, site.manifest.samples[sample].case_id), []).append(offset + position)
        offset += len(site.train)
    return list(groups.values())


def round_cost(config: RunConfig, cases: int) -> RoundCost:
    """What one local round of DP-SGD on ``cases`` training cases spends."""
    per_step = config.privacy.cases_per_step
    return RoundCost(config.privacy.noise_multiplier, min(1.0, per_step / cases),
                     math.ceil(cases / per_step) * config.train.local_epochs)


def site_epsilon(config: RunConfig, sites: Sequence[Site], client: str) -> tuple[float, float]:
    """``client``'s record-level epsilon so far in this run, and after one more round."""
    accountant = site_accountant(config, client)
    return accountant.epsilon(), accountant.epsilon_after(round_cost(config, len(case_groups(sites))))


def check_delta(config: RunConfig, cases: int, client: str) -> None:
    """delta must be well below 1 / cases: a larger one allows leaking one case outright."""
    if config.privacy.delta >= 1 / cases:
        raise PrivacyError(f"{client}: privacy.delta {config.privacy.delta:g} is not below 1 / {cases} training "
                           "cases; choose a smaller delta")


def _case_gradients(model: nn.Module, params: dict[str, nn.Parameter], inputs: Dataset, case: list[int],
                    loss_fn: nn.Module, chunk: int, device: torch.device, dtype: torch.dtype | None
                    ) -> tuple[dict[str, torch.Tensor], float]:
    """Gradient of the mean loss over the slices of one case (in chunks of ``chunk`` slices),
    per trained parameter, and that loss."""
    for p in params.values():
        p.grad = None
    total = 0.0
    for start in range(0, len(case), chunk):
        part = case[start:start + chunk]
        batch = default_collate([inputs[i] for i in part])
        with autocast(device, dtype):
            logits = predict_batch(model, batch, device)
        loss = loss_fn(logits.float(), batch["mask"].to(device)) * (len(part) / len(case))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} in a DP-SGD step")
        loss.backward()
        total += loss.item()
    grads = {name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
             for name, p in params.items()}
    return grads, total


def private_step(optimizer: DPOptimizer, params: dict[str, nn.Parameter],
                 per_case: list[dict[str, torch.Tensor]]) -> None:
    """One DP-SGD step from the per-case gradients (one dict per sampled case, possibly none):
    Opacus clips each case's gradient, sums, adds noise, scales, and the inner optimizer steps."""
    for name, p in params.items():
        p.grad = None
        p.grad_sample = torch.stack([g[name] for g in per_case]) if per_case else p.new_zeros((0, *p.shape))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def dp_local_round(model: nn.Module, sites: Sequence[Site], config: RunConfig, model_cfg: ModelConfig,
                   round_: int, client: str) -> list[EpochResult]:
    """Train ``model`` in place for one round of case-level DP-SGD on the training splits of
    ``sites`` and record its cost in ``client``'s accountant; one result per local epoch."""
    groups = case_groups(sites)
    if not groups:
        raise PrivacyError(f"{client}: no training cases")
    check_delta(config, len(groups), client)
    device = resolve_device(config.train.device)
    dtype = resolve_precision(config.train.precision, device)
    inputs = torch.utils.data.ConcatDataset([site_inputs(s, "train", model, config, model_cfg) for s in sites])
    model.to(device).train()
    params = trained_parameters(model)
    inner = local_optimizer(model, config.train, device)
    kept = kept_state(config, client)
    if kept is not None:
        kept.restore(inner, round_)
    privacy = config.privacy
    noise = torch.Generator(device=device).manual_seed(_os_seed())
    optimizer = DPOptimizer(inner, noise_multiplier=privacy.noise_multiplier, max_grad_norm=privacy.max_grad_norm,
                            expected_batch_size=privacy.cases_per_step, generator=noise)
    sampling = torch.Generator().manual_seed(_os_seed())
    loss_fn = segmentation_loss(config.train.loss, model_cfg.num_classes, config.train.pos_weight).to(device)
    cost = round_cost(config, len(groups))
    steps_per_epoch = cost.steps // config.train.local_epochs
    results = []
    for epoch in range(config.train.local_epochs):
        start, losses, samples = time.perf_counter(), [], 0
        bar = tqdm(total=steps_per_epoch, desc=f"{client} round {round_} epoch {epoch + 1} (DP-SGD)", unit="step",
                   leave=False, mininterval=2.0, disable=None)
        for _ in range(steps_per_epoch):
            chosen = [g for g in groups if torch.rand((), generator=sampling).item() < cost.sample_rate]
            per_case = []
            for case in chosen:
                grads, loss = _case_gradients(model, params, inputs, case, loss_fn, config.train.batch_size,
                                              device, dtype)
                per_case.append(grads)
                losses.append(loss)
                samples += len(case)
            private_step(optimizer, params, per_case)
            bar.update()
        bar.close()
        results.append(EpochResult(loss=sum(losses) / len(losses) if losses else float("nan"), samples=samples,
                                   steps=steps_per_epoch, seconds=time.perf_counter() - start))
    if kept is not None:
        kept.save(inner, round_)
    site_accountant(config, client).spend(cost, round_)
    return results


def _os_seed() -> int:
    """A seed from the operating system's randomness: which cases a step samples, and the
    noise, must not be predictable from the run's configuration."""
    return secrets.randbits(63)
