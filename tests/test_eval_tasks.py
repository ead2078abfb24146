"""The evaluation-task registry (eval/registry.py): a task defined in one module, registered with one
line, goes through submit-time validation, scheduling, the result record, the aggregated table,
the status table and `eval.prepare` with no other file touched; bad registrations and bad task
names or presets in a config get a clear error naming the registered ones (one test per rule).

The toy task lives in this file: a bright square moving over a dark textured background; the
encoder's features of the square's patches on frame 0 make a prototype, and each later frame's
prediction is the centre of the patch most similar to it. Metric: the share of frames whose
predicted centre lies within 10% of the frame's side of the true centre.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.atomicio import atomic_write_json
from core.schema import ConfigError
from eval import davis
from eval.config import EvalConfig
from eval.features import encode_frames
from eval.indexmaps import image_hw
from eval.prepare import main as prepare_main
from eval.protocol import validate
from eval.records import find_record_files, read_records
from eval.registry import TASKS, get_task, register
from eval.splits import read_listing, select_sequences
from eval.task import EvalTask, Evaluation
from launch.evaluations.expected import expected
from launch.results import aggregate_runs
from launch.rundir import RunDirectory
from launch.status import render
from launch.submit import main as submit_main
from testkit.launching import TINY, merged, submit

# --- the toy task: what a new task's module holds ------------------------------------------------------


def write_centre_set(root: str | Path, n_videos: int = 2, n_frames: int = 5, side: int = 64, seed: int = 0) -> Path:
    """<root>/videos.txt, <root>/<video>/NNN.png frames and <root>/<video>/centres.json ([x, y] px per frame)."""
    root, rng = Path(root), np.random.default_rng(seed)
    names = [f"toy{v}" for v in range(n_videos)]
    for name in names:
        background = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
        box, (y, x) = side // 4, rng.integers(0, side // 2, 2)
        centres = []
        for t in range(n_frames):
            frame = background.copy()
            frame[y : y + box, x : x + box] = (230, 200, 40)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(root / name / f"{t:03d}.png")
            centres.append([x + box / 2, y + box / 2])
            y, x = min(side - box, y + 2), min(side - box, x + 3)
        (root / name / "centres.json").write_text(json.dumps(centres))
    (root / "videos.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def run_centre(e: Evaluation) -> dict[str, float]:
    names = select_sequences(
        read_listing(Path(e.cfg.data_root) / "videos.txt", "write one with write_centre_set"), e.cfg.sequences, "videos.txt"
    )
    hits, predictions = [], {}
    for name in names:
        frames = sorted((Path(e.cfg.data_root) / name).glob("*.png"))
        centres = np.array(json.loads((Path(e.cfg.data_root) / name / "centres.json").read_text()))
        frame_hw, side = image_hw(frames[0]), e.frame_size // e.encoder.patch_size * e.encoder.patch_size
        features, (h, w) = encode_frames(e.encoder, frames, frame_hw, (side, side), e.device, e.cfg.batch_frames)
        cell = frame_hw[1] / w  # px per grid cell (square frames)
        x0, y0 = centres[0] / cell  # the square's central cell on frame 0
        prototype = features[0].reshape(h, w, -1)[int(y0), int(x0)]
        best = (features[1:] @ prototype).argmax(dim=1).cpu().numpy()  # (T-1,) most similar cell
        predicted = np.stack([(best % w + 0.5) * cell, (best // w + 0.5) * cell], axis=1)
        hits += list(np.linalg.norm(predicted - centres[1:], axis=1) <= 0.1 * frame_hw[1])
        predictions[name] = predicted.tolist()
    atomic_write_json(e.out_dir / "centres.json", predictions)
    return {"hit@0.1": float(np.mean(hits))}


def prepare_centre(args: argparse.Namespace) -> list:
    write_centre_set(args.root, n_videos=args.videos)
    return read_listing(args.root / "videos.txt", "")


CENTRE = EvalTask(
    name="centre",
    title="toy: follow a square by its frame-0 features",
    metrics=("hit@0.1",),
    headline=("hit@0.1",),
    best_by="hit@0.1",
    default_preset="rsp",
    default_frame_size=64,
    run=run_centre,
    protocol_fields=lambda cfg: {"split": cfg.split},
    check_data=lambda cfg, full: [] if Path(cfg.data_root).is_dir() else [f"data_root ({cfg.data_root}) does not exist"],
    write_generated=write_centre_set,
    smoke_sizes={"n_videos": 2, "n_frames": 5},
    add_prepare_arguments=lambda parser: parser.add_argument("--videos", type=int, default=3),
    prepare=prepare_centre,
    presets=("rsp", "dino"),
)


@pytest.fixture
def centre_task():
    """CENTRE registered for one test (the "one registry line"), removed afterwards."""
    yield register(CENTRE)
    del TASKS[CENTRE.name]


def submit_args(videos: Path, root: Path, *extra: str) -> list[str]:
    return merged(
        *TINY,
        "cluster=debug",
        f"data.root={videos}",
        f"output_root={root / 'runs'}",
        "schedule.total_steps=4",
        "schedule.warmup_steps=1",
        "checkpoint.every_steps=2",
        "checkpoint.milestone_every_steps=2",
        "evaluation.synthetic=true",
        *extra,
    )


# --- one file plus one line ------------------------------------------------------------------------------


def test_a_new_task_runs_through_validation_scheduling_records_table_status_and_prepare(
    centre_task, train_videos, tmp_path, capfd
):
    args = submit_args(train_videos, tmp_path, "evaluation.tasks=[centre]", f"evaluation.data_roots.centre={tmp_path / 'centre'}")
    # The front door: validates, generates the task's set, trains in-process, evaluates each milestone
    # (the training watchdog needs a real stderr: capfd, not the helper's StringIO).
    assert submit_main(args) == 0, capfd.readouterr()
    assert (tmp_path / "centre" / ".generated").is_file() and (tmp_path / "centre" / "toy1" / "004.png").is_file()
    run = RunDirectory(next((tmp_path / "runs").glob("*/run.json")).parent)
    due = expected(run)
    assert [(step, task) for step, task, _ in due] == [(0, "centre"), (2, "centre"), (4, "centre")]  # 0: the initialization
    assert all((d / "record.json").is_file() and (d / "predictions" / "centres.json").is_file() for _, _, d in due)

    records, warnings = read_records(find_record_files(tmp_path / "runs"))
    assert not warnings and sorted(r.step for r in records) == [0, 2, 4]
    record = records[0]
    assert record.task == "centre" and set(record.metrics) == {"hit@0.1"} and 0 <= record.metrics["hit@0.1"] <= 1
    assert record.protocol["preset"] == "rsp" and record.protocol["frame_size"] == 64 and record.protocol["split"] == "val"
    assert record.protocol["generated_set"].startswith("generated centre set (camouflage-1)")  # tables label it

    report = aggregate_runs(tmp_path / "runs", tmp_path / "results")
    assert "centre:hit@0.1" in report.table.columns and report.table["best"].sum() == 1  # best checkpoint picked by hit@0.1
    assert "centre:hit@0.1" in report.summary() and any(p.name == "centre_hit_0.1_vs_step.png" for p in report.plots)
    assert " 3/3" in render(tmp_path / "runs", None)  # the status table counts the task's evaluations

    assert prepare_main(["centre", "--root", str(tmp_path / "prepared"), "--videos", "2"]) == 0
    assert read_listing(tmp_path / "prepared" / "videos.txt", "") == ["toy0", "toy1"]


# --- bad input: one test per rule ------------------------------------------------------------------------


def test_a_task_registered_twice_is_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match=r"'davis' is registered twice; registered: davis, vip, jhmdb, photo_davis"):
        register(davis.TASK)
    with pytest.raises(ValueError, match=r"'davis' is registered twice"):
        register(dataclasses.replace(CENTRE, name="davis"))
    assert list(TASKS) == ["davis", "vip", "jhmdb", "photo_davis"] and TASKS["davis"] is davis.TASK


def test_an_inconsistent_task_definition_is_refused_when_registered():
    broken = dataclasses.replace(CENTRE, name="broken", best_by="miss", default_preset="vip")
    with pytest.raises(ValueError) as info:
        register(broken)
    assert "headline/best_by name miss, not in metrics (hit@0.1)" in str(info.value)
    assert "default_preset (vip) must be one of its presets" in str(info.value)
    assert "broken" not in TASKS


def test_an_unregistered_task_in_a_config_is_refused_at_submit_naming_the_registered_ones(train_videos, tmp_path):
    rc, out = submit(submit_args(train_videos, tmp_path, "evaluation.tasks=[davis,centre]", "evaluation.data_roots.davis=x"))
    assert rc == 2
    assert (
        "evaluation.tasks entry 'centre' is not a registered evaluation task; registered: davis, vip, jhmdb, photo_davis" in out
    )
    assert not (tmp_path / "runs").exists()  # nothing was created
    with pytest.raises(
        ConfigError, match=r"task \('centre'\) is not a registered evaluation task; registered: davis, vip, jhmdb, photo_davis"
    ):
        validate(EvalConfig(checkpoint="a.pt", data_root="d", task="centre"))
    with pytest.raises(
        ValueError, match="'centre' is not a registered evaluation task; registered: davis, vip, jhmdb, photo_davis"
    ):
        get_task("centre")


def test_a_task_name_misspelled_in_a_per_task_setting_is_refused(train_videos, tmp_path):
    rc, out = submit(submit_args(train_videos, tmp_path, "evaluation.tasks=[]", "evaluation.presets.davsi=rsp"))
    assert rc == 2 and "evaluation.presets.davsi names 'davsi', which is not a registered evaluation task" in out


def test_a_preset_that_does_not_exist_for_a_task_is_refused_naming_the_valid_ones(centre_task, train_videos, tmp_path):
    extra = ("evaluation.tasks=[centre]", f"evaluation.data_roots.centre={tmp_path / 'centre'}", "evaluation.presets.centre=vip")
    rc, out = submit(submit_args(train_videos, tmp_path, *extra))
    assert rc == 2 and "evaluation.presets.centre ('vip') does not exist for task centre; valid: auto (= rsp), rsp, dino" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "centre").exists()
    with pytest.raises(ConfigError, match=r"preset \('fast'\) does not exist for task davis; valid: auto \(= rsp\), dino, rsp"):
        validate(EvalConfig(checkpoint="a.pt", data_root="d", task="davis", preset="fast"))
