"""Any ViT checkpoint -> a `ViTEncoder` ready for label propagation.

Formats (detected from the file's structure, or forced with `fmt`):
    ours            <run>/checkpoints/step_XXXXXXXX.pt (sha256 verified against its manifest):
                    {"format", "model", "config", "model_name", ...}; heads from our registry
    rsp_reference   the reference RSP's checkpoint-N.pth: {"model", "optimizer", "epoch", "scaler",
                    "args"} with a pickled argparse Namespace (needs trust: weights_only=False)
    dino            DINO training checkpoints {"teacher", "student", ...} with "module." /
                    "backbone." prefixes and DINO-head keys
    mae             MAE checkpoints {"model": ...} with decoder_* / mask_token keys
    timm            a plain ViT state dict (timm names; DINO's released backbones are of this kind)
Keys that are not the encoder's are dropped only when they belong to a known non-encoder part
(decoders, latent MLPs, heads); anything else is an error, as is a missing encoder key. Position
embeddings stay at their training grid here; the encoder interpolates them bicubically to each
frame's grid (docs/evaluation.md#features).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rsp.architectures import MODELS
from rsp.checkpoint import load_checkpoint_file
from rsp.encoder import ViTEncoder, is_encoder_key
from rsp.interop import REFERENCE_NAME_SUFFIX, load_torch_file, strip_wrapper_prefixes

log = logging.getLogger(__name__)

# Non-encoder parts, dropped explicitly (docs/model.md#posterior-and-prior, docs/model.md#decoder, MAE, DINO, timm classifiers).
DROPPED_PREFIXES = (
    "decoder_",
    "mask_token",
    "mae_",
    "to_posterior.",
    "to_prior.",  # RSP / MAE decoders and latent
    "head.",
    "head_dist.",
    "pre_logits.",  # classification and DINO projection heads
)
OUR_CHECKPOINT_NAME = re.compile(r"step_\d{8}\.pt")


@dataclass
class Backbone:
    encoder: ViTEncoder
    format: str  # the format the file was read as
    path: Path
    dropped_keys: list[str] = field(default_factory=list)  # non-encoder keys that were dropped

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size


def load_backbone(
    path: str | Path,
    fmt: str = "auto",
    *,
    trust_pickle: bool = False,
    dino_branch: str = "teacher",
    num_heads: int | None = None,
) -> Backbone:
    """Read `path`, pick the encoder's weights and build a strictly loaded `ViTEncoder` (eval mode)."""
    path = Path(path)
    raw = _load_file(path, trust_pickle)
    try:
        detected = detect_format(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; evaluate a ViT checkpoint (ours, reference RSP, timm, DINO or MAE)") from exc
    if fmt != "auto" and fmt != detected:
        raise ValueError(
            f"{path} looks like a {detected!r} checkpoint, not {fmt!r}; pass checkpoint_format=auto "
            f"or checkpoint_format={detected}"
        )
    state, heads = _state_dict_and_heads(raw, detected, dino_branch, path)
    state = strip_wrapper_prefixes(state)
    encoder_state, dropped = split_encoder_keys(state, path)
    try:
        encoder = ViTEncoder.from_state_dict(encoder_state, num_heads=num_heads or heads)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"{path} ({detected} format) does not hold a ViT encoder this project can run: {exc}. "
            "Evaluate a ViT checkpoint (ours, reference RSP, timm, DINO or MAE), or pass num_heads= "
            "if only the head count could not be inferred."
        ) from exc
    log.info("loaded %s as %s (%d encoder tensors, %d dropped)", path, detected, len(encoder_state), len(dropped))
    return Backbone(encoder=encoder.eval(), format=detected, path=path, dropped_keys=dropped)


def _load_file(path: Path, trust_pickle: bool) -> Any:
    if OUR_CHECKPOINT_NAME.fullmatch(path.name) and path.with_suffix(".json").is_file():
        return load_checkpoint_file(path)
    try:
        return load_torch_file(path, trust_pickle)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; pass checkpoint=PATH to an existing .pt/.pth file") from exc


def detect_format(raw: Any) -> str:
    if not isinstance(raw, dict):
        raise ValueError(f"a checkpoint must be a dict, got {type(raw).__name__}")
    if str(raw.get("format", "")).startswith("rsp-checkpoint") or {"model", "config", "model_name"} <= raw.keys():
        return "ours"
    if "teacher" in raw or "student" in raw:
        return "dino"
    if isinstance(raw.get("model"), dict):
        model = strip_wrapper_prefixes(raw["model"])  # bare names: DDP / eval wrappers prefix them
        is_rsp = any(k.startswith(("decoder_embed_deter", "to_prior.")) for k in model)
        return "rsp_reference" if is_rsp and "args" in raw else "mae"
    if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        return "timm"
    raise ValueError(f"unrecognized checkpoint layout with top-level keys {', '.join(map(str, list(raw)[:10]))}")


def _state_dict_and_heads(raw: dict, fmt: str, dino_branch: str, path: Path) -> tuple[dict, int | None]:
    """The (still prefixed) state dict to read, and the head count when the file says it."""
    if fmt == "ours":
        spec = MODELS.get(raw.get("model_name") or raw["config"]["model"]["name"])
        return raw["model"], spec.num_heads if spec else None
    if fmt == "rsp_reference":
        # The reference names its models like ours, or like ours plus the decoder's shape.
        name = str(getattr(raw.get("args"), "model", "")).removesuffix(REFERENCE_NAME_SUFFIX)
        return raw["model"], MODELS[name].num_heads if name in MODELS else None
    if fmt == "dino":
        if dino_branch not in raw:
            raise ValueError(f"{path} has no {dino_branch!r} network (has {', '.join(raw)}); set dino_branch")
        return raw[dino_branch], None
    if fmt == "mae":
        return raw["model"], None
    return raw, None


def split_encoder_keys(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(encoder keys, dropped keys). Keys of no known part raise: a silent drop could hide a model
    whose features are not what this project computes (e.g. a distillation token)."""
    encoder = {k: v for k, v in state.items() if is_encoder_key(k)}
    dropped = [k for k in state if not is_encoder_key(k) and k.startswith(DROPPED_PREFIXES)]
    unknown = [k for k in state if not is_encoder_key(k) and not k.startswith(DROPPED_PREFIXES)]
    if unknown:
        raise ValueError(
            f"{path} has keys that are neither ViT encoder keys nor a known decoder/head part: "
            f"{', '.join(unknown[:12])}{' ...' if len(unknown) > 12 else ''}. This evaluator runs plain ViTs "
            "(timm naming: cls_token, pos_embed, patch_embed.*, blocks.N.*, norm.*)."
        )
    return encoder, dropped
