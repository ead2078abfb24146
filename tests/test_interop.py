"""Encoder weights to and from timm and the reference checkpoint format (docs/model.md#interoperability)."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch

from rsp.architectures import MODELS
from rsp.encoder import ViTEncoder
from rsp.interop import (
    export_timm_encoder,
    load_checkpoint_encoder,
    load_reference_checkpoint,
    read_checkpoint,
    reference_model_config,
    timm_vit,
)
from rsp.model import create_model

TINY = "rsp_vit_tiny_patch8"


def same_features(ours: torch.nn.Module, theirs: torch.nn.Module, img: int) -> None:
    x = torch.randn(1, 3, img, img, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours.forward_features(x), theirs.eval().forward_features(x)
    assert a.shape == b.shape == (1, 1 + (img // ours.patch_size) ** 2, ours.embed_dim)
    # regression tolerance: the same weights through timm's blocks can differ by float rounding only (S/16 at
    # 224 px: max abs difference 0.0 with torch 2.14.1 and timm 1.0.31, 2026-11-29); 1e-4 leaves room for other kernels
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def reference_args(**overrides) -> argparse.Namespace:
    """The model-related part of the reference's argparse Namespace: the attribute names and defaults of
    main_pretrain_rsp.py at commit 3a653e28 (argparse turns --noise-scale into noise_scale) with
    --norm_pix_loss; `model` and `input_size` are the tiny test model's."""
    args = dict(
        model=TINY,
        input_size=32,
        norm_pix_loss=True,
        mask_ratio=0.75,
        noise_scale=0.5,
        kl_scale=0.01,
        kl_balance=0.2,
        kl_freebit=0.1,
        stoch=32,
        discrete=32,
        batch_size=64,
    )
    return argparse.Namespace(**{**args, **overrides})


def write_reference_checkpoint(path, model, args=None, prefix=""):
    """A file in the reference's format: dict(model, optimizer, epoch, scaler, args) (docs/model.md#interoperability).
    Values: lr 9e-4 is the recipe's, epoch 199 the released checkpoint-199.pth's, 65536.0 GradScaler's initial scale."""
    state = {prefix + k: v for k, v in model.state_dict().items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 9e-4, "params": list(range(len(state)))}]}
    torch.save({"model": state, "optimizer": optimizer, "epoch": 199, "scaler": {"scale": 65536.0}, "args": args}, path)


# --- out: timm --------------------------------------------------------------------------------


def test_small_patch16_encoder_loads_strictly_into_timm_with_equal_features():
    torch.manual_seed(0)
    model = create_model("rsp_vit_small_patch16").eval()
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    missing, unexpected = vit.load_state_dict(export_timm_encoder(model), strict=True)
    assert not missing and not unexpected
    same_features(model, vit, 224)


@pytest.mark.parametrize(
    "name",
    [
        "rsp_vit_small_patch8",
        "rsp_vit_base_patch16",
        pytest.param("rsp_vit_large_patch16", marks=pytest.mark.slow),  # ~12 s on 2 cores
    ],
)
def test_every_encoder_loads_strictly_into_its_timm_model(name):
    # 32 px keeps the large model quick; the position-embedding table shrinks alike on both sides.
    torch.manual_seed(0)
    model = create_model(name, img_size=32).eval()
    vit = timm.create_model(MODELS[name].timm_name, pretrained=False, num_classes=0, img_size=32)
    vit.load_state_dict(export_timm_encoder(model), strict=True)
    same_features(model, vit, 32)


def test_timm_vit_carries_the_encoder():
    torch.manual_seed(0)
    model = create_model(TINY, img_size=32).eval()
    vit = timm_vit(model)
    assert vit.num_classes == 0
    same_features(model, vit, 32)


def test_timm_weights_load_back_into_our_encoder():
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=64)
    encoder = ViTEncoder.from_state_dict(vit.state_dict())
    assert (encoder.embed_dim, len(encoder.blocks), encoder.blocks[0].attn.num_heads) == (384, 12, 6)
    same_features(encoder.eval(), vit, 64)


def test_exported_encoder_reloads_weights_only(tmp_path):
    model = create_model(TINY, img_size=32)
    torch.save(export_timm_encoder(model), tmp_path / "encoder.pth")
    state = torch.load(tmp_path / "encoder.pth", weights_only=True)
    assert state.keys() == model.encoder_state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.encoder_state_dict().items())


# --- in: reference checkpoints ------------------------------------------------------------------


def test_reference_checkpoint_needs_the_trust_switch(tmp_path):
    torch.manual_seed(0)
    source = create_model(TINY, img_size=32)
    path = tmp_path / "checkpoint-199.pth"
    write_reference_checkpoint(path, source, reference_args(), prefix="module.")
    with pytest.raises(ValueError, match=r"arbitrary code.*trust_pickle=True"):
        load_reference_checkpoint(path)
    loaded = load_reference_checkpoint(path, trust_pickle=True)
    assert loaded.cfg.name == TINY and loaded.cfg.img_size == 32
    state = loaded.state_dict()
    assert state.keys() == source.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())


def test_weights_only_checkpoint_loads_without_the_switch_into_a_given_model(tmp_path):
    torch.manual_seed(0)
    source = create_model(TINY, img_size=32)
    path = tmp_path / "plain.pth"
    write_reference_checkpoint(path, source, args=None)
    target = create_model(TINY, img_size=32)
    assert load_reference_checkpoint(path, model=target) is target
    assert torch.equal(target.decoder_pred.weight, source.decoder_pred.weight)
    with pytest.raises(ValueError, match="no 'args' to rebuild the model"):
        load_reference_checkpoint(path)


def test_checkpoint_with_missing_and_unexpected_keys_names_them(tmp_path):
    source = create_model(TINY, img_size=32)
    state = source.state_dict()
    state["decoder_extra.weight"] = state.pop("decoder_pred.weight")
    torch.save({"model": state, "epoch": 1}, tmp_path / "bad.pth")
    target = create_model(TINY, img_size=32)
    before = target.decoder_norm.weight.clone()
    with pytest.raises(
        ValueError, match=r"missing keys \(1\): decoder_pred\.weight \| unexpected keys \(1\): decoder_extra\.weight"
    ):
        load_reference_checkpoint(tmp_path / "bad.pth", model=target)
    assert torch.equal(target.decoder_norm.weight, before)  # nothing was loaded


def test_checkpoint_for_another_architecture_names_the_shapes(tmp_path):
    write_reference_checkpoint(tmp_path / "c.pth", create_model(TINY, img_size=32), args=None)
    with pytest.raises(ValueError, match=r"shape mismatches: pos_embed: \(1, 17, 96\) in the file vs \(1, 65, 96\)"):
        load_reference_checkpoint(tmp_path / "c.pth", model=create_model(TINY, img_size=64))


def test_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"not a checkpoint in the reference format .* found \['state_dict'\]"):
        read_checkpoint(tmp_path / "other.pth")


def test_encoder_alone_from_a_reference_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = create_model(TINY, img_size=32).eval()
    write_reference_checkpoint(tmp_path / "c.pth", source, reference_args(), prefix="module.")
    encoder = load_checkpoint_encoder(tmp_path / "c.pth", trust_pickle=True)
    assert type(encoder) is ViTEncoder
    same_features(source, encoder.eval(), 32)


def test_reference_args_map_onto_the_model_config():
    cfg = reference_model_config(
        reference_args(
            model="rsp_vit_small_patch16_dec512d8b", input_size=224, kl_scale=0.1, noise_scale=0.1, norm_pix_loss=False
        )
    )
    assert (cfg.name, cfg.img_size, cfg.kl_scale, cfg.noise_scale, cfg.norm_pix_loss) == (
        "rsp_vit_small_patch16",
        224,
        0.1,
        0.1,
        False,
    )
    assert (cfg.latent, cfg.mae_aux, cfg.stoch, cfg.discrete) == ("discrete", "shared", 32, 32)
    with pytest.raises(ValueError, match=r"args\.model \('mae_vit_base'\) is not a registered model; valid: "):
        reference_model_config(reference_args(model="mae_vit_base"))
    with pytest.raises(ValueError, match=r"args\.discrete is 0"):
        reference_model_config(reference_args(discrete=0))
