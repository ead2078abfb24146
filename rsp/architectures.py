"""The registered RSP architectures: name -> ModelSpec (patch size, widths, depths, heads). Torch-free,
so configs can be validated (rsp.config) and checkpoints described (eval.backbone) without building
a model; rsp.model builds them (`create_model`). Names and sizes are the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a registered model (docs/model.md#architecture)."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    timm_name: str | None = None  # timm ViT that the encoder loads into strictly


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, spec: ModelSpec) -> None:
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = spec


register_model("rsp_vit_small_patch8", ModelSpec(8, 384, 12, 6, timm_name="vit_small_patch8_224"))
register_model("rsp_vit_small_patch16", ModelSpec(16, 384, 12, 6, timm_name="vit_small_patch16_224"))
register_model("rsp_vit_base_patch16", ModelSpec(16, 768, 12, 12, timm_name="vit_base_patch16_224"))
register_model("rsp_vit_large_patch16", ModelSpec(16, 1024, 24, 16, timm_name="vit_large_patch16_224"))
# A few-MFLOP model for tests and smoke runs (use model.img_size=64): same code paths, tiny widths.
register_model("rsp_vit_tiny_patch8", ModelSpec(8, 96, 3, 3, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4))
