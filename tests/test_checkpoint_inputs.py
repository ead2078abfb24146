"""What evaluation does with a file given as a checkpoint, one test per rule: a file that is not a
torch checkpoint says what it looks like (and never suggests trust_checkpoint), a damaged one says
so in one line, a stored model name must agree with the weights, num_heads may not contradict it
and is hashed when it decides; the reference's own checkpoints load with trust_checkpoint=true.
Then the evaluation command line: hints, one message, exit status 2, nothing written."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from core.filekind import PICKLE, TORCH_LEGACY, TORCH_ZIP, sniff
from core.schema import ConfigError
from eval.backbone import load_backbone
from eval.config import EvalConfig
from eval.davis import write_davis
from eval.protocol import protocol_hash
from eval.run import config_from_overrides, evaluate
from rsp.checkpoint import CheckpointError, CheckpointStore, PickleRefused, load_checkpoint_file
from rsp.manifest import sha256_file
from rsp.model import create_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model = create_model("rsp_vit_tiny_patch8", img_size=64)
    store = CheckpointStore(root / "run" / "checkpoints")
    payload = {
        "model": model.state_dict(),
        "step": 20,
        "model_name": "rsp_vit_tiny_patch8",
        "config_hash": "abc",
        "code_version": "t",
    }
    store.commit(20, {**payload, "config": {"model": {"name": "rsp_vit_tiny_patch8", "img_size": 64}}}, milestone=True)
    # The reference's checkpoint-N.pth: dict(model, optimizer, epoch, scaler, args=Namespace) with DDP-prefixed keys.
    args = argparse.Namespace(
        model="rsp_vit_tiny_patch8", input_size=64, batch_size=8, epochs=400, norm_pix_loss=True, lr=None, blr=1.5e-4
    )
    reference = {
        "model": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
        "epoch": 199,
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "args": args,
    }
    torch.save(reference, root / "checkpoint-199.pth")
    torch.save(model.encoder_state_dict(), root / "vit.pth")
    return {
        "ours": store.dir / "step_00000020.pt",
        "reference": root / "checkpoint-199.pth",
        "timm": root / "vit.pth",
        "root": root,
    }


def message_of(path: Path, **kwargs) -> str:
    with pytest.raises((ValueError, FileNotFoundError, IsADirectoryError, CheckpointError)) as err:
        load_backbone(path, **kwargs)
    text = str(err.value)
    assert "\n" not in text  # one line
    return text


# --- what a file is ---------------------------------------------------------------------------------------

NOT_CHECKPOINTS = {
    "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "random or unknown binary data"),
    "text": (b"epoch 10 loss 0.5\n" * 30, "text (UTF-8)"),
    "json": (json.dumps({"model": [1, 2]}).encode(), "JSON text"),
    "html": (b"<!DOCTYPE html><html><body>Not found</body></html>", "an HTML/XML page"),
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
    "jpeg": (b"\xff\xd8\xff\xe0" + bytes(64), "a JPEG image"),
    "mp4": (bytes(4) + b"ftypisom" + bytes(64), "an MP4/MOV video"),
    "avi": (b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(64), "an AVI video"),
    "gzip": (gzip.compress(b"x" * 100), "a gzip-compressed file"),
    "npy": (b"\x93NUMPY" + bytes(64), "a NumPy .npy array"),
    "lfs": (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n", "a Git LFS pointer"),
    "empty": (b"", "an empty file (0 bytes)"),
    "pickle": (pickle.dumps({"w": [1.0, 2.0]}), "a Python pickle, not a torch checkpoint"),
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
def test_a_file_that_is_not_a_checkpoint_says_what_it_looks_like(tmp_path, kind):
    data, looks = NOT_CHECKPOINTS[kind]
    path = tmp_path / "model.pth"
    path.write_bytes(data)
    for trust in (False, True):  # trusting changes nothing for a file that is not a torch checkpoint
        text = message_of(path, trust_pickle=trust)
        assert f"{path} is not a checkpoint (looks like {looks}" in text and "torch.save" in text
        assert "trust" not in text


def test_a_zip_that_is_not_a_checkpoint_names_its_entries(tmp_path):
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.bin", b"0")
    assert "looks like a zip archive of 1 file(s): weights.bin" in message_of(path)


def test_torch_files_are_recognized(files, tmp_path):
    torch.save({"a": torch.zeros(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert [sniff(p).kind for p in (files["timm"], files["reference"], tmp_path / "legacy.pt")] == [
        TORCH_ZIP,
        TORCH_ZIP,
        TORCH_LEGACY,
    ]
    (tmp_path / "p.pkl").write_bytes(pickle.dumps([1]))
    assert sniff(tmp_path / "p.pkl").kind == PICKLE


def test_trust_is_suggested_only_for_a_pickle_that_needs_it(files):
    text = message_of(files["reference"])
    assert "refused: it references code (argparse.Namespace)" in text and "trust_checkpoint=true" in text


class RunsAProgram:
    """What a malicious checkpoint pickles: a call of os.system (posix.system) at load time."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_that_calls_code_is_refused_as_such_never_damaged_and_never_run(tmp_path, legacy):
    path, marker = tmp_path / "checkpoint-199.pth", tmp_path / "it-ran"
    torch.save({"model": RunsAProgram(marker)}, path, _use_new_zipfile_serialization=not legacy)
    for trust in (False, True):  # trusting a file that calls os.system is not offered, and not done
        text = message_of(path, trust_pickle=trust)
        assert f"{path} refused: it references code (posix.system)" in text and "damaged" not in text
        assert "do not load this file with weights_only=False" in text and "trust_checkpoint" not in text
    assert not marker.exists()


def test_a_malicious_pickle_beside_a_forged_manifest_is_refused_in_one_line(tmp_path):
    """The sha256 in the manifest matches (forged along with the file): verification passes, and
    the load still refuses, with the same one line."""
    path, marker = tmp_path / "step_00000010.pt", tmp_path / "it-ran"
    torch.save({"model": RunsAProgram(marker)}, path)
    manifest = {"step": 10, "file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest |= {"config_hash": "x", "milestone": True, "model_name": "rsp_vit_tiny", "code_version": "x", "created": 0.0}
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(PickleRefused) as err:
        load_checkpoint_file(path)
    assert "refused: it references code (posix.system)" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_a_truncated_checkpoint_is_one_clear_line(files, tmp_path, cut):
    data = files["reference"].read_bytes()
    path = tmp_path / "checkpoint-5.pth"
    path.write_bytes(data[: int(len(data) * cut)])
    for trust in (False, True):
        text = message_of(path, trust_pickle=trust)
        assert f"{path} is a damaged torch checkpoint" in text and "copy or download it again" in text
        assert "trust" not in text


def test_a_checkpoint_corrupted_in_the_middle_fails_its_crc(files, tmp_path):
    data = bytearray(files["timm"].read_bytes())
    data[len(data) // 2 : len(data) // 2 + 32] = bytes(32)
    path = tmp_path / "vit.pth"
    path.write_bytes(bytes(data))
    assert "fails its CRC check" in message_of(path, num_heads=3)


def test_a_torn_step_file_beside_its_manifest_is_refused(files, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("step_00000020.pt", "step_00000020.json"):
        (folder / name).write_bytes((files["ours"].parent / name).read_bytes())
    data = (folder / "step_00000020.pt").read_bytes()
    (folder / "step_00000020.pt").write_bytes(data[: len(data) // 3])
    text = message_of(folder / "step_00000020.pt")
    assert "refusing to load" in text and "its manifest says" in text and "load another checkpoint of the run" in text
    (folder / "step_00000020.json").write_text("{not json")
    assert "manifest" in message_of(folder / "step_00000020.pt") and "cannot be read" in message_of(folder / "step_00000020.pt")


def test_a_directory_or_a_missing_file_is_named(files, tmp_path):
    text = message_of(files["root"])
    assert "is a directory, not a file; it holds" in text and "run/checkpoints/step_00000020.pt" in text
    assert f"checkpoint {tmp_path / 'none.pth'} does not exist" in message_of(tmp_path / "none.pth")


# --- what the weights are -----------------------------------------------------------------------------------


def test_the_stored_model_name_must_agree_with_the_weights(files, tmp_path):
    raw = torch.load(files["ours"], weights_only=True)
    raw["model_name"] = "rsp_vit_small_patch16"
    torch.save(raw, tmp_path / "step_00000020.pt")  # no manifest beside it
    text = message_of(tmp_path / "step_00000020.pt")
    assert "states its model as rsp_vit_small_patch16 (patch 16, width 384" in text
    assert "but its weights are patch 8, width 96, depth 3" in text and "match the registered rsp_vit_tiny_patch8" in text
    ref = torch.load(files["reference"], weights_only=False)
    ref["args"].model = "rsp_vit_small_patch8_dec512d8b"
    torch.save(ref, tmp_path / "checkpoint-1.pth")
    assert "states its model as rsp_vit_small_patch8" in message_of(tmp_path / "checkpoint-1.pth", trust_pickle=True)


def test_num_heads_may_not_contradict_the_stated_model(files):
    text = message_of(files["ours"], num_heads=4)
    assert "num_heads (4) contradicts" in text and "has 3 heads" in text and "drop num_heads" in text
    assert load_backbone(files["ours"], num_heads=3).encoder.blocks[0].attn.num_heads == 3  # agreeing is fine


def test_num_heads_must_divide_the_width(files):
    assert "num_heads (5) must divide the encoder width (96)" in message_of(files["timm"], num_heads=5)


def test_num_heads_enters_the_protocol_hash_only_when_given():
    base = EvalConfig(checkpoint="c.pt", data_root="d")
    assert protocol_hash(base) == protocol_hash(EvalConfig(checkpoint="c.pt", data_root="d", num_heads=None))
    assert protocol_hash(base) != protocol_hash(EvalConfig(checkpoint="c.pt", data_root="d", num_heads=3))


def test_non_finite_weights_are_refused(files, tmp_path):
    state = torch.load(files["timm"], weights_only=True)
    state["blocks.1.mlp.fc1.weight"][0, 0] = float("inf")
    torch.save(state, tmp_path / "diverged.pth")
    text = message_of(tmp_path / "diverged.pth", num_heads=3)
    assert "NaN or infinite weights in 1 encoder tensor(s) (blocks.1.mlp.fc1.weight)" in text and "earlier checkpoint" in text


def test_the_reference_checkpoint_loads_when_trusted(files):
    backbone = load_backbone(files["reference"], trust_pickle=True)
    assert backbone.format == "rsp_reference" and backbone.encoder.blocks[0].attn.num_heads == 3


# --- the evaluation command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["--checkpoint", "/c.pt", "task=davis"], ("--checkpoint: settings are key=value overrides", "write checkpoint=/c.pt")),
        (["chekpoint=/c.pt"], ("chekpoint is not a key of the evaluation config", "did you mean checkpoint?")),
        (["checkpoint=~/c.pt"], ("cannot parse 'checkpoint=~/c.pt'", "quote the value: 'checkpoint=\"~/c.pt\"'")),
        (["patch_size=8"], ("patch_size is not a key", "evaluation reads it from the checkpoint's weights")),
        (["task=davis", "task=vip"], ("task is given twice ('davis' and 'vip')", "give it once")),
        (["topk=5,7"], ("'topk=5,7'", "give topk one value")),
        (["task=[davis,vip]"], ("task=['davis', 'vip']", "it takes one value: run python -m eval.run once per value")),
    ],
)
def test_evaluation_command_line_rule(argv, parts):
    with pytest.raises(ConfigError) as err:
        config_from_overrides(argv)
    text = str(err.value)
    assert all(part in text for part in parts), text


def test_a_refused_evaluation_writes_nothing(files, tmp_path):
    davis = write_davis(tmp_path / "davis", n_sequences=1, n_frames=4, height=64, width=96)
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="is not a checkpoint"):
        evaluate(EvalConfig(checkpoint=str(bad), data_root=str(davis), frame_size=64, output_dir=str(out), device="cpu"))
    with pytest.raises(ConfigError, match=r"frame_size \(60\) must be a multiple of the checkpoint's patch size \(8\)"):
        evaluate(
            EvalConfig(checkpoint=str(files["ours"]), data_root=str(davis), frame_size=60, output_dir=str(out), device="cpu")
        )
    assert not out.exists()


def test_the_evaluation_cli_exits_2_with_one_message_and_no_traceback(tmp_path):
    davis = write_davis(tmp_path / "davis", n_sequences=1, n_frames=3, height=64, width=96)
    bad = tmp_path / "random.pth"
    bad.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval.run",
            f"checkpoint={bad}",
            f"data_root={davis}",
            "task=davis",
            f"output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and "is not a checkpoint (looks like random or unknown binary data" in proc.stderr
    assert "trust" not in proc.stderr and not (tmp_path / "out").exists()
