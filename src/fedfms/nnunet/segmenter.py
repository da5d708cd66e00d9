"""The nnU-Net network of a plan, with fedfms' segmenter contract.

``forward``: images ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, C, H, W)``, one per fedfms class,
to be read through a sigmoid like every fedfms model's: for one class (nnU-Net's softmax over
background and foreground) the logit is ``l_fg - l_bg``, whose sigmoid is the softmax foreground
probability; for regions (several classes) nnU-Net's sigmoid logits are returned as they are.

- In eval mode each image goes through nnunetv2's ``nnUNetPredictor``: nnU-Net's preprocessing
  (cropping to the non-zero region, the plan's normalisation), sliding-window prediction over
  patches with Gaussian weighting (optionally mirrored), and the result put back at the image's
  own shape -- any ``H, W``, square or not.
- In train mode (the paper's like-for-like recipe: whole images, fedfms' loss and optimizer) the
  network sees the whole image, normalised by the plan's scheme and zero-padded to the network's
  divisor, with one output head (no deep supervision).

nnU-Net's own recipe does not go through ``forward``: its trainer trains :attr:`network` directly
(:mod:`fedfms.nnunet.trainer`).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
from nnunetv2.preprocessing.normalization import default_normalization_schemes as normalization_schemes
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

from fedfms.nnunet.workspace import CONFIGURATION, SPACING_2D

_EPS = 1e-6


class NnUNetSegmenter(nn.Module):
    """nnU-Net's network for ``plans`` and ``dataset`` (its ``dataset.json``); every parameter,
    deep-supervision heads included, trains and travels."""

    def __init__(self, plans: dict[str, Any], dataset: dict[str, Any], tile_step: float = 0.5,
                 mirroring: bool = False):
        super().__init__()
        self.plans, self.dataset = plans, dataset
        self.tile_step, self.mirroring = tile_step, mirroring
        self._plans_manager = PlansManager(plans)
        self._configuration = self._plans_manager.get_configuration(CONFIGURATION)
        self._labels = self._plans_manager.get_label_manager(dataset)
        c = self._configuration
        self.network = get_network_from_plans(c.network_arch_class_name, c.network_arch_init_kwargs,
                                              c.network_arch_init_kwargs_req_import, len(dataset["channel_names"]),
                                              self._labels.num_segmentation_heads, allow_init=True,
                                              deep_supervision=True)
        self.divisor = tuple(int(np.prod(s)) for s in zip(*c.pool_op_kernel_sizes))

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self._configuration.patch_size)

    @property
    def class_count(self) -> int:
        """fedfms classes segmented (C of the logits)."""
        return len(self._labels.foreground_regions if self._labels.has_regions else self._labels.foreground_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._whole_image_logits(images)
        predictor = self.predictor()
        return torch.stack([self.predict_image(image, predictor) for image in images])

    def _class_logits(self, heads: torch.Tensor) -> torch.Tensor:
        """``(..., K, H, W)`` network outputs -> ``(..., C, H, W)`` fedfms logits."""
        if self._labels.has_regions:
            return heads
        return heads[..., 1:, :, :] - heads[..., :1, :, :]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """The plan's normalisation of ``(B, 3, H, W)`` images in [0, 1], each image and channel on
        its own (z-score for non-CT channels; only the non-zero region when the plan says
        ``use_mask_for_norm``), as nnunetv2's normalisation classes do it. ``(B, 3, H, W)`` float32."""
        c = self._configuration
        properties = self._plans_manager.foreground_intensity_properties_per_channel
        schemes = zip(c.normalization_schemes, c.use_mask_for_norm, strict=True)
        normalisers = [getattr(normalization_schemes, scheme)(use_mask_for_norm=mask,
                                                              intensityproperties=properties[str(i)])
                       for i, (scheme, mask) in enumerate(schemes)]
        out = []
        for image in images.detach().float().cpu().numpy() * 255.0:
            seg = np.where(create_nonzero_mask(image[:, None])[0], 0, -1)  # nnU-Net's "outside" label
            out.append(np.stack([n.run(channel, seg) for n, channel in zip(normalisers, image, strict=True)]))
        return torch.from_numpy(np.stack(out)).float().to(images.device)

    def _whole_image_logits(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        x = F.pad(self.normalise(images), (0, -w % self.divisor[1], 0, -h % self.divisor[0]))
        self.network.decoder.deep_supervision = False
        return self._class_logits(self.network(x)[..., :h, :w])

    def predictor(self) -> nnUNetPredictor:
        """nnunetv2's predictor over the current weights, on the network's device."""
        device = next(self.network.parameters()).device
        with contextlib.redirect_stdout(io.StringIO()):
            predictor = nnUNetPredictor(tile_step_size=self.tile_step, use_gaussian=True,
                                        use_mirroring=self.mirroring,
                                        perform_everything_on_device=device.type == "cuda", device=device,
                                        verbose=False, allow_tqdm=False)
        self.network.decoder.deep_supervision = False
        predictor.manual_initialization(self.network, self._plans_manager, self._configuration,
                                        [self.network.state_dict()], self.dataset, "nnUNetTrainer", (0, 1))
        return predictor

    def predict_image(self, image: torch.Tensor, predictor: nnUNetPredictor | None = None) -> torch.Tensor:
        """nnU-Net's inference on one ``(3, H, W)`` image in [0, 1]: ``(C, H, W)`` logits."""
        data = image.detach().float().cpu().numpy()[:, None] * 255.0
        with contextlib.redirect_stdout(io.StringIO()):
            _, probabilities = (predictor or self.predictor()).predict_single_npy_array(
                data, {"spacing": list(SPACING_2D)}, None, None, True)
        p = torch.from_numpy(np.asarray(probabilities, dtype=np.float32)[:, 0]).clamp(_EPS, 1 - _EPS)
        logits = torch.log(p) - torch.log1p(-p)
        if not self._labels.has_regions:
            logits = logits[1:]
        return logits.to(image.device)
