"""A client's data as training code sees it: folder, manifest, 9:1 split by case, and the scoring
of a model on it. Used by the federated ClientApp and by centralized training alike."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from fedfms.config import DataConfig, ModelConfig, RunConfig
from fedfms.data import (
    ClientDataset,
    ClientManifest,
    find_clients,
    leave_one_client_out,
    read_manifest,
    save_split,
    train_val_split,
)
from fedfms.data.dataset import read_array
from fedfms.data.manifest import IMAGES_DIR, MASKS_DIR
from fedfms.errors import FedfmsError
from fedfms.train.device import resolve_device, resolve_precision
from fedfms.train.embeddings import cached_embeddings, default_cache_root
from fedfms.train.local import make_loader, score
from fedfms.train.metrics import ScoreAccumulator


class SiteError(FedfmsError, RuntimeError):
    """A client folder cannot serve the run (missing, wrong classes...); names the folder."""


@dataclass(frozen=True)
class Site:
    """One client's prepared folder, manifest and split (sample indices)."""

    directory: Path
    manifest: ClientManifest
    train: list[int]
    val: list[int]

    @property
    def name(self) -> str:
        return self.manifest.client

    def dataset(self, part: str, model: ModelConfig) -> ClientDataset:
        """``part`` is ``train``, ``val`` or ``all``; samples sized for ``model``."""
        indices = {"train": self.train, "val": self.val, "all": None}[part]
        return ClientDataset(self.directory, indices, image_size=model.image_size, mask_size=model.mask_size)


def site_inputs(site: Site, part: str, model: nn.Module, config: RunConfig,
                model_cfg: ModelConfig | None = None) -> Dataset:
    """What ``model`` trains on or is scored on for ``part`` of ``site``: its images, or in
    ``decoder`` mode (frozen encoder) their image embeddings, computed once into
    ``train.embedding_cache`` (see :mod:`fedfms.train.embeddings`)."""
    model_cfg = model_cfg or config.model
    return model_inputs(site.dataset(part, model_cfg), model, config, model_cfg, f"{site.name} {part} embeddings")


def model_inputs(images: ClientDataset, model: nn.Module, config: RunConfig, model_cfg: ModelConfig,
                 desc: str = "embeddings") -> Dataset:
    """``images`` as ``model`` (built from ``model_cfg``) takes them: themselves, or in
    ``decoder`` mode their image embeddings, read from ``train.embedding_cache`` (computed
    there first where missing, under a progress bar named ``desc``)."""
    if model_cfg.arch != "sam" or model_cfg.mode != "decoder":
        return images
    device = resolve_device(config.train.device, "train.device")
    root = config.train.embedding_cache or default_cache_root()
    return cached_embeddings(images, model, root, device, resolve_precision(config.train.precision, device),
                             desc=desc)


def ordered_clients(data: DataConfig) -> list[Path]:
    """Client folders of a one-machine run, in the order of ``data.clients`` (default: sorted)."""
    if data.root is None:
        raise SiteError("data.root is not set: this run needs the folder of prepared clients")
    found = {p.name: p for p in find_clients(data.root)}
    names = data.clients if data.clients is not None else sorted(found)
    missing = [n for n in names if n not in found]
    if missing:
        raise SiteError(f"{data.root}: no prepared client folder for {missing} (found {sorted(found)})")
    check_unseen(data.unseen, names, data.root)
    return [found[n] for n in names]


def check_unseen(unseen: str | None, clients: list[str], root: Path) -> None:
    """Refuse an ``unseen`` client that is none of ``clients`` (the folders under ``root``), in
    one line that lists them and suggests the near matches (case-insensitive)."""
    if unseen is None or unseen in clients:
        return
    lowered = {c.lower(): c for c in clients}
    near = [unseen.lower()] if unseen.lower() in lowered else difflib.get_close_matches(unseen.lower(), list(lowered), n=3)
    hint = f"; did you mean {' or '.join(repr(lowered[n]) for n in near)}?" if near else ""
    raise SiteError(f"data.unseen {unseen!r} is not one of the clients in {root}: {', '.join(clients)}{hint}")


def load_site(directory: Path, config: RunConfig) -> Site:
    """Read the manifest and split it 9:1 by case (deterministic by ``data.split_seed``)."""
    manifest = read_manifest(directory)
    if not manifest.samples:
        raise SiteError(f"{directory}: client {manifest.client!r} has no samples; prepare it again or leave it out "
                        "of data.clients")
    if manifest.num_classes != config.model.num_classes:
        raise SiteError(f"{directory}: client {manifest.client!r} has {manifest.num_classes} classes "
                        f"{manifest.class_names}, the model has {config.model.num_classes}")
    train, val = train_val_split(manifest, config.data.val_fraction, config.data.split_seed, config.data.val_count)
    return Site(directory, manifest, train, val)


def check_site_files(site: Site) -> None:
    """Every sample of the manifest has its image and mask array, readable and of the stored
    sizes (only the arrays' headers are read: a quick check before a run, so a broken folder is
    named before any engine starts)."""
    missing = [f"{kind}/{record.id}.npy" for record in site.manifest.samples for kind in (IMAGES_DIR, MASKS_DIR)
               if not (site.directory / kind / f"{record.id}.npy").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SiteError(f"{site.directory}: {len(missing)} sample file(s) listed in the manifest are missing: {shown}; "
                        "prepare this client again")
    m = site.manifest
    for record in m.samples:
        read_array(site.directory / IMAGES_DIR / f"{record.id}.npy", (-1, m.image_size, m.image_size))
        read_array(site.directory / MASKS_DIR / f"{record.id}.npy", (m.num_classes, m.mask_size, m.mask_size))


def site_scores(model: nn.Module, site: Site, config: RunConfig,
                model_cfg: ModelConfig | None = None) -> tuple[str, ScoreAccumulator]:
    """The scores of ``model`` on a site, not yet reduced: on all its data if it is the unseen
    client (split ``test``), else on its validation split (``val``); with the split's name."""
    model_cfg = model_cfg or config.model
    split = "test" if site.name == config.data.unseen else "val"
    inputs = site_inputs(site, "all" if split == "test" else "val", model, config, model_cfg)
    loader = make_loader(inputs, config.evaluation.batch_size, shuffle=False, seed=0,
                         num_workers=config.train.num_workers)
    return split, score(model, loader, site.manifest.class_names, config.evaluation,
                        resolve_device(config.train.device, "train.device"), config.train.precision)


def score_site(model: nn.Module, site: Site, config: RunConfig, model_cfg: ModelConfig | None = None) -> dict[str, Any]:
    """Scores of ``model`` on a site (see :func:`site_scores`). Returns ``split`` plus the keys
    of :meth:`ScoreAccumulator.summary`."""
    split, scores = site_scores(model, site, config, model_cfg)
    return {"split": split, **scores.summary()}


def client_info(client: str, train: int, val: int, samples: int, unseen: str | None) -> dict[str, Any]:
    """What results.json says of one client: the unseen client's whole data is its test set."""
    if client == unseen:
        return {"role": "unseen", "test": samples, "samples": samples}
    return {"role": "train", "train": train, "val": val, "samples": samples}


def save_run_split(config: RunConfig) -> None:
    """Write ``split.json`` into the run folder: the sample ids of every client's train and
    validation split and of the unseen client's test set. For runs that see every client folder
    (simulation, centralized); in a deployment each hospital keeps its own split."""
    if config.data.unseen is None:
        return
    manifests = {m.client: m for m in (read_manifest(p) for p in ordered_clients(config.data))}
    split = leave_one_client_out(manifests, config.data.unseen, config.data.val_fraction, config.data.split_seed,
                                 config.data.val_count)
    save_split(split, config.output_dir / "split.json")
