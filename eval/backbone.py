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
    state, stated = _state_dict_and_model(raw, detected, dino_branch, path)
    state = strip_wrapper_prefixes(state)
    encoder_state, dropped = split_encoder_keys(state, path)
    heads = head_count(encoder_state, stated, num_heads, path) if "patch_embed.proj.weight" in encoder_state else num_heads
    broken = [k for k, v in encoder_state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(
            f"{path} has NaN or infinite weights in {len(broken)} encoder tensor(s) ({', '.join(broken[:3])}"
            f"{' ...' if len(broken) > 3 else ''}): its features would be meaningless (did the run diverge?); "
            "evaluate an earlier checkpoint"
        )
    try:
        encoder = ViTEncoder.from_state_dict(encoder_state, num_heads=heads)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"{path} ({detected} format) does not hold a ViT encoder this project can run: {exc}. "
            "Evaluate a ViT checkpoint (ours, reference RSP, timm, DINO or MAE), or pass num_heads= "
            "if only the head count could not be inferred."
        ) from exc
    log.info("loaded %s as %s (%d encoder tensors, %d dropped)", path, detected, len(encoder_state), len(dropped))
    return Backbone(encoder=encoder.eval(), format=detected, path=path, dropped_keys=dropped)


def weights_shape(encoder_state: dict[str, torch.Tensor]) -> dict[str, int]:
    """patch, width, depth and MLP width of an encoder, read off its tensors."""
    width, _, patch, _ = encoder_state["patch_embed.proj.weight"].shape
    depth = 1 + max((int(k.split(".")[1]) for k in encoder_state if k.startswith("blocks.")), default=-1)
    mlp = encoder_state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in encoder_state else 0
    return {"patch": int(patch), "width": int(width), "depth": depth, "mlp": int(mlp)}


def head_count(encoder_state: dict[str, torch.Tensor], stated: str | None, num_heads: int | None, path: Path) -> int | None:
    """The attention heads to build the encoder with. Weights do not show the head count, but it
    changes the features, so it comes from the model the checkpoint states (which must agree with
    the weights' shapes, and which a num_heads override may not contradict), else from num_heads
    (which then enters the protocol hash: eval.protocol), else from the width (head dim 64)."""
    shape = weights_shape(encoder_state)
    divisors = [d for d in range(1, shape["width"] + 1) if shape["width"] % d == 0]
    if num_heads is not None and num_heads not in divisors:
        raise ValueError(
            f"num_heads ({num_heads}) must divide the encoder width ({shape['width']}) of {path}; "
            f"choose one of {', '.join(map(str, divisors))}"
        )
    if stated is None:
        return num_heads
    spec = MODELS.get(stated)
    if spec is None:
        if num_heads is None:
            raise ValueError(
                f"{path} states its model as {stated!r}, which is not a registered model (valid: {', '.join(sorted(MODELS))}), "
                "so its head count is unknown; pass num_heads=N (it becomes part of the protocol hash)"
            )
        return num_heads
    named = {"patch": spec.patch_size, "width": spec.embed_dim, "depth": spec.depth, "mlp": int(spec.embed_dim * spec.mlp_ratio)}
    differ = [k for k in ("patch", "width", "depth", "mlp") if named[k] != shape[k]]
    if differ:
        describe = lambda d: ", ".join(f"{k} {d[k]}" for k in ("patch", "width", "depth", "mlp"))  # noqa: E731
        matching = [
            n
            for n, m in MODELS.items()
            if (m.patch_size, m.embed_dim, m.depth) == (shape["patch"], shape["width"], shape["depth"])
        ]
        match = f" (they match the registered {', '.join(matching)})" if matching else " (no registered model has them)"
        raise ValueError(
            f"{path} states its model as {stated} ({describe(named)}, {spec.num_heads} heads) but its weights are "
            f"{describe(shape)}{match}: the stored model name is wrong, and the head count (which weights do not show) "
            "would be guessed. Fix the checkpoint's model name, or evaluate its weights alone as a timm state "
            "dict (torch.save(ckpt['model'], path)) with num_heads=N"
        )
    if num_heads is not None and num_heads != spec.num_heads:
        raise ValueError(
            f"num_heads ({num_heads}) contradicts {path}, whose model {stated} has {spec.num_heads} heads; "
            "drop num_heads (the checkpoint states its model)"
        )
    return spec.num_heads


def _load_file(path: Path, trust_pickle: bool) -> Any:
    if OUR_CHECKPOINT_NAME.fullmatch(path.name) and path.with_suffix(".json").is_file():
        return load_checkpoint_file(path)
    return load_torch_file(path, trust_pickle)


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


def _state_dict_and_model(raw: dict, fmt: str, dino_branch: str, path: Path) -> tuple[dict, str | None]:
    """The (still prefixed) state dict to read, and the model name the file states (ours and the
    reference's name their model; timm, DINO and MAE files do not)."""
    if fmt == "ours":
        config_name = raw.get("config", {}).get("model", {}).get("name") if isinstance(raw.get("config"), dict) else None
        return raw["model"], raw.get("model_name") or config_name
    if fmt == "rsp_reference":
        # The reference names its models like ours, or like ours plus the decoder's shape.
        name = getattr(raw.get("args"), "model", None)
        return raw["model"], str(name).removesuffix(REFERENCE_NAME_SUFFIX) if name else None
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
