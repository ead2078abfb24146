"""The evaluation entry points: typed config and its hash, `evaluate(cfg)` on all three tasks, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.schema import ConfigError
from eval.config import PRESETS, EvalConfig
from eval.davis import write_davis
from eval.jhmdb import write_jhmdb
from eval.protocol import propagation_params, protocol, protocol_hash, validate
from eval.run import EvalOutcome, config_from_overrides, evaluate
from eval.vip import write_vip
from rsp.encoder import ViTEncoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_sets")
    torch.manual_seed(0)
    vit = ViTEncoder(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1)
    for p in vit.parameters():
        torch.nn.init.normal_(p, std=0.2)
    torch.save(vit.encoder_state_dict(), root / "vit.pth")
    return {
        "checkpoint": root / "vit.pth",
        "davis": write_davis(root / "davis", n_sequences=2, n_frames=6, height=64, width=112),
        "jhmdb": write_jhmdb(root / "jhmdb", n_videos=2, n_frames=5),
        "vip": write_vip(root / "vip", n_videos=2, n_frames=6, height=64, width=112, annotate_every=5),
    }


def config(sets, task: str, tmp_path: Path, **overrides) -> EvalConfig:
    size = {"davis": 64, "jhmdb": 64, "vip": 112}[task]
    return EvalConfig(
        checkpoint=str(sets["checkpoint"]),
        task=task,
        data_root=str(sets[task]),
        frame_size=size,
        output_dir=str(tmp_path / task),
        workers=1,
        **overrides,
    )


# --- config ------------------------------------------------------------------------------------------------


def test_presets_and_overrides():
    cfg = EvalConfig(checkpoint="x.pt", data_root="d", preset="rsp")
    assert propagation_params(cfg) == PRESETS["rsp"] == PRESETS["rsp"].__class__(7, 30, 30, 0.1)
    assert PRESETS["dino"] == PRESETS["dino"].__class__(5, 7, 12, 0.1)
    assert protocol(dataclasses.replace(cfg, topk=5))["preset"] == "rsp+topk=5"
    assert propagation_params(EvalConfig(task="vip")) == PRESETS["vip"]  # auto: the task's default


def test_protocol_hash_covers_what_changes_the_numbers_only():
    base = EvalConfig(checkpoint="a.pt", data_root="d", preset="rsp")
    explicit = EvalConfig(
        checkpoint="b.pt",
        data_root="elsewhere",
        preset="dino",
        topk=7,
        n_last_frames=30,
        radius=30,
        output_dir="o",
        device="cpu",
        batch_frames=1,
        workers=3,
    )
    assert protocol_hash(base) == protocol_hash(explicit)  # same protocol under other names, paths, devices
    for change in ({"topk": 5}, {"temperature": 0.07}, {"frame_size": 512}, {"split": "test-dev"}, {"sequences": ["bike"]}):
        assert protocol_hash(dataclasses.replace(base, **change)) != protocol_hash(base), change
    assert protocol_hash(base) == protocol_hash(EvalConfig(checkpoint="a.pt", data_root="d", preset="rsp"))
    assert len(protocol_hash(base)) == 64


@pytest.mark.parametrize(
    "change, message",
    [
        ({"checkpoint": ""}, "checkpoint is empty"),
        ({"checkpoint_format": "onnx"}, "checkpoint_format ('onnx') must be one of"),
        ({"dino_branch": "ema"}, "dino_branch ('ema') must be one of"),
        (
            {"task": "kinetics"},
            "task ('kinetics') is not a registered evaluation task; registered: davis, vip, jhmdb, photo_davis",
        ),
        ({"preset": "best"}, "preset ('best') does not exist for task davis; valid: auto (= rsp), dino, rsp, siammae, vip"),
        ({"topk": 0}, "topk (0) must be >= 1"),
        ({"n_last_frames": -1}, "n_last_frames (-1) must be >= 0"),
        ({"radius": -2}, "radius (-2) must be >= 0"),
        ({"temperature": 0.0}, "temperature (0.0) must be > 0"),
        ({"data_root": ""}, "data_root is empty"),
        ({"frame_size": 8}, "frame_size (8) must be >= 16"),
        ({"pose_topk": 0}, "pose_topk (0) must be >= 1"),
        ({"pose_sigma": 0.0}, "pose_sigma (0.0) must be > 0"),
        ({"device": "tpu"}, "device ('tpu') must be one of"),
        ({"batch_frames": -1}, "batch_frames (-1) must be >= 1, or 0 for automatic"),
        ({"jhmdb_split": 4}, "jhmdb_split (4) must be 1, 2 or 3"),
        ({"workers": -1}, "workers (-1) must be >= 0"),
        ({"cpu_threads": -1}, "cpu_threads (-1) must be >= 0"),
        ({"num_heads": 0}, "num_heads (0) must be >= 1"),
    ],
)
def test_each_validation_rule(change, message):
    cfg = dataclasses.replace(EvalConfig(checkpoint="x.pt", data_root="d"), **change)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert message in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        validate(EvalConfig(topk=0, temperature=-1.0))
    assert len(info.value.problems) == 4  # checkpoint, data_root, topk, temperature


def test_hydra_overrides_build_the_typed_config():
    cfg = config_from_overrides(["checkpoint=/c.pt", "task=jhmdb", "preset=dino", "topk=3", "sequences=[a,b]"])
    assert isinstance(cfg, EvalConfig) and cfg.task == "jhmdb" and cfg.topk == 3 and cfg.sequences == ["a", "b"]
    with pytest.raises(ConfigError, match="tpok is not a key of the evaluation config; did you mean topk"):
        config_from_overrides(["checkpoint=/c.pt", "tpok=3"])


# --- end to end --------------------------------------------------------------------------------------------


def test_evaluate_davis_writes_predictions_csvs_and_metrics(sets, tmp_path):
    outcome = evaluate(config(sets, "davis", tmp_path, preset="dino"))
    assert isinstance(outcome, EvalOutcome) and outcome.task == "davis"
    assert set(outcome.metrics) == {"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"}
    assert all(0 <= outcome.metrics[k] <= 1 for k in ("J&F-Mean", "J-Mean", "F-Mean"))
    assert outcome.protocol["preset"] == "dino" and outcome.protocol["topk"] == 5 and outcome.protocol["patch_size"] == 8
    assert len(list((outcome.output_dir / "synth-001").glob("*.png"))) == 6
    saved = json.loads((outcome.output_dir / "metrics.json").read_text())
    assert saved["metrics"] == outcome.metrics and saved["protocol"]["protocol_hash"] == outcome.protocol["protocol_hash"]
    table = pd.read_csv(outcome.output_dir / "global_results-val.csv")
    assert table["J&F-Mean"][0] == pytest.approx(outcome.metrics["J&F-Mean"], abs=5e-4)  # the CSV's %.3f rounding


def test_evaluate_jhmdb_and_vip(sets, tmp_path):
    threads = torch.get_num_threads()
    try:
        pose = evaluate(config(sets, "jhmdb", tmp_path, cpu_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert pose.protocol["generated_set"] is None  # written without a marker: read as a real dataset
    assert set(pose.metrics) == {"PCK@0.1", "PCK@0.2"} and pose.metrics["PCK@0.1"] <= pose.metrics["PCK@0.2"]
    keypoints = json.loads((pose.output_dir / "keypoints.json").read_text())
    assert len(keypoints["walk/synth_000"]) == 4 and len(keypoints["walk/synth_000"][0]) == 15
    parts = evaluate(config(sets, "vip", tmp_path))
    assert set(parts.metrics) == {"mIoU"} and 0 < parts.metrics["mIoU"] <= 1
    assert (parts.output_dir / "videos1" / "000005.png").is_file()
    assert parts.protocol["preset"] == "vip" and parts.protocol["frame_size"] == 112


@pytest.mark.slow  # the evaluation command line in a subprocess: ~10 s
def test_cli_prints_and_writes_metrics(sets, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval.run",
            f"checkpoint={sets['checkpoint']}",
            "task=davis",
            "preset=rsp",
            f"data_root={sets['davis']}",
            "frame_size=64",
            "sequences=[synth-000]",
            f"output_dir={tmp_path / 'cli'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "J&F-Mean" in result.stdout and "davis (rsp, hash" in result.stdout
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["protocol"]["sequences"] == ["synth-000"]
    bad = subprocess.run(
        [sys.executable, "-m", "eval.run", "checkpoint=x.pt", "data_root=d", "topk=0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 2 and "topk (0) must be >= 1" in bad.stderr
