"""Every checkpoint format evaluation reads, built as small fake files of a tiny ViT (no network)."""

from __future__ import annotations

import argparse

import pytest
import torch

from eval.backbone import load_backbone
from rsp.checkpoint import CheckpointError, CheckpointStore
from rsp.encoder import ViTEncoder
from rsp.model import create_model


def tiny_vit(seed: int) -> ViTEncoder:
    """Width 64 (one head by the width / 64 rule), two blocks, patch 8, trained at 32 px."""
    torch.manual_seed(seed)
    vit = ViTEncoder(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1)
    for p in vit.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return vit.eval()


def same_features(a: ViTEncoder, b: ViTEncoder) -> bool:
    x = torch.randn(2, 3, 40, 56)  # not the training grid: position embeddings are interpolated
    with torch.no_grad():
        return torch.allclose(a.forward_features(x), b.forward_features(x), atol=1e-6)


def test_our_checkpoint_is_verified_and_loses_its_decoder(tmp_path):
    model = create_model("rsp_vit_tiny_patch8", img_size=64)
    store = CheckpointStore(tmp_path / "run" / "checkpoints")
    payload = {
        "model": model.state_dict(),
        "step": 100,
        "model_name": "rsp_vit_tiny_patch8",
        "config": {"model": {"name": "rsp_vit_tiny_patch8", "img_size": 64}},
        "config_hash": "abc",
        "code_version": "test",
    }
    store.commit(100, payload, milestone=True)
    path = store.dir / "step_00000100.pt"
    backbone = load_backbone(path)
    assert backbone.format == "ours" and backbone.patch_size == 8
    assert len(backbone.encoder.blocks[0].attn.qkv.weight) == 3 * 96
    assert any(k.startswith("decoder_") for k in backbone.dropped_keys) and "mask_token" in backbone.dropped_keys
    assert same_features(backbone.encoder, ViTEncoder.from_state_dict(model.encoder_state_dict(), num_heads=3))
    with open(path, "r+b") as f:  # an altered file fails its manifest's sha256
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CheckpointError, match="sha256"):
        load_backbone(path)


def test_reference_rsp_checkpoint_needs_the_trust_switch(tmp_path):
    model = create_model("rsp_vit_tiny_patch8", img_size=64)
    path = tmp_path / "checkpoint-199.pth"
    args = argparse.Namespace(model="rsp_vit_tiny_patch8_dec512d8b", input_size=64)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "epoch": 199, "scaler": {}, "args": args}, path)
    with pytest.raises(
        ValueError, match=r"checkpoint-199\.pth refused: it references code \(argparse\.Namespace\).* trust_checkpoint=true"
    ):
        load_backbone(path)
    backbone = load_backbone(path, trust_pickle=True)
    assert backbone.format == "rsp_reference"
    assert backbone.encoder.blocks[0].attn.num_heads == 3  # from our registry via args.model
    assert same_features(backbone.encoder, ViTEncoder.from_state_dict(model.encoder_state_dict(), num_heads=3))


@pytest.mark.parametrize("prefix", ["backbone.", "module.backbone."])
def test_reference_rsp_checkpoint_is_recognized_under_any_wrapper_prefix(tmp_path, prefix):
    model = create_model("rsp_vit_tiny_patch8", img_size=64)
    path = tmp_path / "checkpoint-199.pth"
    args = argparse.Namespace(model="rsp_vit_tiny_patch8", input_size=64)
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "epoch": 199, "scaler": {}, "args": args}, path)
    backbone = load_backbone(path, "rsp_reference", trust_pickle=True)
    assert backbone.format == "rsp_reference"
    assert backbone.encoder.blocks[0].attn.num_heads == 3  # from args.model, which only this format reads


def test_timm_state_dict_drops_the_classifier(tmp_path):
    vit = tiny_vit(0)
    state = {**vit.encoder_state_dict(), "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "vit.pth")
    backbone = load_backbone(tmp_path / "vit.pth", "timm")
    assert backbone.dropped_keys == ["head.weight", "head.bias"]
    assert same_features(backbone.encoder, vit)


def test_dino_checkpoint_branches_and_prefixes(tmp_path):
    teacher, student = tiny_vit(1), tiny_vit(2)
    head = {"head.mlp.0.weight": torch.zeros(8, 64), "head.last_layer.weight_g": torch.ones(1, 8)}
    torch.save(
        {
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.encoder_state_dict().items()}, **head},
            "student": {
                **{f"module.backbone.{k}": v for k, v in student.encoder_state_dict().items()},
                **{f"module.{k}": v for k, v in head.items()},
            },
            "epoch": 100,
        },
        tmp_path / "checkpoint.pth",
    )
    assert same_features(load_backbone(tmp_path / "checkpoint.pth").encoder, teacher)
    from_student = load_backbone(tmp_path / "checkpoint.pth", "dino", dino_branch="student")
    assert from_student.format == "dino" and same_features(from_student.encoder, student)


def test_mae_checkpoint_drops_decoder_and_mask_token(tmp_path):
    vit = tiny_vit(3)
    decoder = {
        "mask_token": torch.zeros(1, 1, 32),
        "decoder_embed.weight": torch.zeros(32, 64),
        "decoder_blocks.0.attn.qkv.weight": torch.zeros(96, 32),
        "decoder_pred.bias": torch.zeros(192),
    }
    torch.save({"model": {**vit.encoder_state_dict(), **decoder}}, tmp_path / "mae_pretrain.pth")
    backbone = load_backbone(tmp_path / "mae_pretrain.pth")
    assert backbone.format == "mae" and sorted(backbone.dropped_keys) == sorted(decoder)
    assert same_features(backbone.encoder, vit)


def test_a_checkpoint_that_is_not_a_vit_names_the_file(tmp_path):
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match=r"resnet\.pth has keys that are neither ViT encoder keys .*conv1\.weight"):
        load_backbone(tmp_path / "resnet.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match=r"tensor\.pth: a checkpoint must be a dict"):
        load_backbone(tmp_path / "tensor.pth")


def test_a_missing_encoder_key_is_listed(tmp_path):
    state = tiny_vit(4).encoder_state_dict()
    del state["blocks.1.attn.qkv.weight"]
    torch.save(state, tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"vit\.pth .*missing keys \(1\): blocks\.1\.attn\.qkv\.weight"):
        load_backbone(tmp_path / "vit.pth")


def test_forced_format_that_does_not_match_and_missing_file(tmp_path):
    torch.save(tiny_vit(5).encoder_state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"looks like a 'timm' checkpoint, not 'dino'"):
        load_backbone(tmp_path / "vit.pth", "dino")
    with pytest.raises(FileNotFoundError, match="nothere.pth does not exist"):
        load_backbone(tmp_path / "nothere.pth")
