"""The local optimizer, and its state kept at a site across rounds (``train.optimizer_state``).

``reset`` (default): a fresh Adam every round, as FedAvg's analysis assumes. ``keep``: each site
keeps its Adam moments from round to round, as the FedFMS reference code does. The state is the
site's own: it is written to the node's disk (``train.state_dir``, default
``$XDG_STATE_HOME/fedfms/optimizer``; a SuperNode may set ``state-dir`` in its node config), one
file per run and client, and never sent. It carries the round it was saved after, so that a run
resumed from an earlier round starts that site with a fresh optimizer instead of moments from a
future it no longer has (a warning says so).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from fedfms.config import RunConfig, TrainConfig
from fedfms.io import atomic_write
from fedfms.models.segmenter import PromptFreeSegmenter

logger = logging.getLogger("fedfms")


def trained_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` that require grad and receive one: for a prompt-free SAM
    segmenter, without its idle ones (see
    :meth:`~fedfms.models.segmenter.PromptFreeSegmenter.idle_parameter_names`)."""
    idle = model.idle_parameter_names() if isinstance(model, PromptFreeSegmenter) else set()
    return {name: p for name, p in model.named_parameters() if p.requires_grad and name not in idle}


def fused_adam_supported(device: torch.device) -> bool:
    """Whether torch has a fused Adam kernel for ``device`` (CPU and CUDA have)."""
    return device.type in _get_fused_kernels_supported_devices()


def local_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam over :func:`trained_parameters` of ``model``, after moving it to ``device`` (so that a
    loaded state lands beside its parameters); the fused kernel (one pass over each tensor
    instead of one per arithmetic step) where the device has one."""
    model.to(device)
    return torch.optim.Adam(list(trained_parameters(model).values()), lr=cfg.lr, betas=cfg.betas,
                            fused=fused_adam_supported(device) or None)


def default_state_root() -> Path:
    """``$XDG_STATE_HOME/fedfms/optimizer`` (``~/.local/state/fedfms/optimizer``)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "fedfms" / "optimizer"


class KeptOptimizerState:
    """One site's optimizer state for one run, in ``root/<digest of run and client>.pt``."""

    def __init__(self, root: Path, run: str, client: str) -> None:
        key = hashlib.sha256(f"{run}\0{client}".encode()).hexdigest()[:32]
        self.path = Path(root) / f"{key}.pt"
        self.client = client

    def restore(self, optimizer: torch.optim.Optimizer, round_: int) -> bool:
        """Load the state saved after round ``round_ - 1`` into ``optimizer``; ``False`` (fresh
        optimizer) when there is none, or it belongs to another round."""
        if not self.path.is_file():
            return False
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if saved["round"] != round_ - 1:
            logger.warning("%s: kept optimizer state is from round %d, this is round %d (a resumed run): "
                           "starting with a fresh optimizer", self.client, saved["round"], round_)
            return False
        optimizer.load_state_dict(saved["state"])
        return True

    def save(self, optimizer: torch.optim.Optimizer, round_: int) -> None:
        """Write the state after round ``round_`` (temporary file, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda stream: torch.save({"round": round_, "state": optimizer.state_dict()}, stream))


def kept_state(config: RunConfig, client: str) -> KeptOptimizerState | None:
    """Where ``client`` keeps its optimizer state in the run ``config`` (``None`` for ``reset``)."""
    if config.train.optimizer_state != "keep":
        return None
    return KeptOptimizerState(config.train.state_dir or default_state_root(),
                              f"{config.name}\0{config.output_dir}", client)
