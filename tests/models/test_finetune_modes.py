"""Fine-tuning modes: which parameters train (and travel), adapter/LoRA arithmetic, one step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fedfms.models import CheckpointError, build_model, load_trainable_state, trainable_state
from fedfms.models.adapters import Adapter, LoRA

ENCODER = "sam.vision_encoder."
ALWAYS_TRAIN = ("sam.prompt_encoder.", "sam.mask_decoder.", "head.")


def _trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_sam_mode_trains_everything(tiny_cfg) -> None:
    model = build_model(tiny_cfg(mode="sam"))
    names = {name for name, _ in model.named_parameters()}
    assert _trainable(model) == names
    assert any(n.startswith(ENCODER) for n in names)


@pytest.mark.parametrize(
    ("mode", "branch", "count"),
    [
        ("msa", ("attn.adapter.", "mlp.adapter."), 2 * 2 * 4),  # blocks x adapters x tensors
        ("lora", ("attn.qkv.lora.",), 2 * 2),  # blocks x (down, up) weights
    ],
)
def test_frozen_encoder_modes_train_exactly_branches_decoder_head(
    tiny_cfg, mode: str, branch: tuple[str, ...], count: int
) -> None:
    model = build_model(tiny_cfg(mode=mode))
    names = {name for name, _ in model.named_parameters()}
    expected = {
        n
        for n in names
        if n.startswith(ALWAYS_TRAIN) or (n.startswith(ENCODER) and any(b in n for b in branch))
    }
    assert _trainable(model) == expected
    assert len({n for n in expected if n.startswith(ENCODER)}) == count
    assert list(trainable_state(model)) == sorted(expected)


def test_msa_block_follows_the_paper(tiny_cfg) -> None:
    """x' = h + mlp(n) + 0.5 adapter(n); n = norm2(h); h = x + a + adapter(a); a = attn(norm1 x)."""
    plain = build_model(tiny_cfg(mode="sam"), seed=0).sam.vision_encoder.layers[1].eval()
    model = build_model(tiny_cfg(mode="msa"), seed=0).eval()
    layer = model.sam.vision_encoder.layers[1]  # a global-attention block: no windows
    attn_adapter, mlp_adapter = layer.attn.adapter, layer.mlp.adapter
    assert isinstance(attn_adapter, Adapter) and isinstance(mlp_adapter, Adapter)
    with torch.no_grad():
        for adapter in (attn_adapter, mlp_adapter):
            adapter.up.weight.normal_()
        x = torch.randn(1, 4, 4, 32)
        a = plain.attn(plain.layer_norm1(x))[0]  # the same block without adapters
        h = x + a + attn_adapter.up(F.gelu(attn_adapter.down(a)))
        n = plain.layer_norm2(h)
        adapter_n = mlp_adapter.up(F.gelu(mlp_adapter.down(n)))
        expected = h + plain.mlp(n) + 0.5 * adapter_n
        torch.testing.assert_close(layer(x), expected)
        torch.testing.assert_close(model.sam.vision_encoder.layers[1](x), expected)  # the encoder runs the wrappers


def test_lora_adds_scaled_low_rank_update(tiny_cfg) -> None:
    plain = build_model(tiny_cfg(mode="sam"), seed=0).sam.vision_encoder.layers[0].attn.qkv
    model = build_model(tiny_cfg(mode="lora", lora_rank=4, lora_alpha=8.0), seed=0).eval()
    qkv = model.sam.vision_encoder.layers[0].attn.qkv
    lora = qkv.lora
    assert isinstance(lora, LoRA) and lora.down.weight.shape == (4, 32)
    with torch.no_grad():
        lora.up.weight.normal_()
        x = torch.randn(3, 32)
        expected = plain(x) + 2.0 * lora.up(lora.down(x))
        torch.testing.assert_close(qkv(x), expected)


def test_branches_start_as_identity_and_then_change_the_output(tiny_cfg, tiny_images) -> None:
    plain = build_model(tiny_cfg(mode="sam"), seed=0).eval()
    for mode in ("msa", "lora"):
        adapted = build_model(tiny_cfg(mode=mode), seed=0).eval()
        with torch.no_grad():
            torch.testing.assert_close(adapted(tiny_images), plain(tiny_images))
            for module in adapted.modules():
                if isinstance(module, (Adapter, LoRA)):
                    module.up.weight.normal_()
            assert not torch.allclose(adapted(tiny_images), plain(tiny_images))


@pytest.mark.parametrize("mode", ["sam", "msa", "lora"])
def test_adam_step_changes_only_trainable(tiny_cfg, tiny_images, mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(mode=mode, num_classes=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    target = (torch.rand(2, 2, 16, 16) > 0.5).float()
    F.binary_cross_entropy_with_logits(model(tiny_images), target).backward()
    optimizer.step()
    trainable = _trainable(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= trainable
    with_grad = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert with_grad <= changed
    assert "head.weight" in changed and "sam.mask_decoder.mask_tokens.weight" in changed
    if mode != "sam":
        assert any(n.startswith(ENCODER) for n in changed)  # the branches learn


def test_deepcopy_copies_the_branches_with_the_model(tiny_cfg, tiny_images) -> None:
    model = build_model(tiny_cfg(mode="msa")).eval()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for module in clone.modules():
            if isinstance(module, Adapter):
                module.up.bias.fill_(0.5)
        assert not torch.allclose(clone(tiny_images), model(tiny_images))
        model.load_state_dict(clone.state_dict())
        torch.testing.assert_close(clone(tiny_images), model(tiny_images))


def test_trainable_state_round_trip_and_strictness(tiny_cfg) -> None:
    source = build_model(tiny_cfg(mode="msa"))
    target = build_model(tiny_cfg(mode="msa"))
    state = trainable_state(source)
    assert all(not v.requires_grad for v in state.values())
    load_trainable_state(target, state)
    assert all(torch.equal(state[k], v) for k, v in trainable_state(target).items())

    missing = dict(state)
    del missing["head.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): head\.bias"):
        load_trainable_state(target, missing)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): extra"):
        load_trainable_state(target, state | {"extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"head\.weight: \(2, 4, 1, 1\)"):
        load_trainable_state(target, state | {"head.weight": torch.zeros(2, 4, 1, 1)})
    frozen = "sam.vision_encoder.layers.0.attn.base.qkv.weight"
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_trainable_state(target, state | {frozen: source.state_dict()[frozen]})
