"""The one validation (launch.validation): a run and a sweep are judged by the same rules, a sweep's
problems name its runs, sweeps show the warnings and data notes a single run shows, the backend
judges the job script (SLURM: `sbatch --test-only`, or a clear problem when sbatch is missing), and a
refused sweep writes nothing: not its data, run directories or sweep records."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from fixtures_data import unavailable
from test_submit_rules import cfg_with, listed_root

from launch.backends import Resources, make_backend
from launch.submit import main
from launch.validation import SweepContext, validate
from launch.validation.sweep import backend_problems
from rsp.video import LabelEntry
from testkit.launching import merged

SHORT_VIDEO_NOTE = "1 of the 41 videos with a known length have fewer than data.max_gap + 1 = 13 frames"


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under `roots`, each file with its size and modification time: what 'nothing
    written' compares (a folder's own time changes when the writable-probe's temporary file comes
    and goes, which leaves nothing)."""
    out = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            stat = path.lstat()
            out[str(path)] = (stat.st_size, stat.st_mtime_ns) if path.is_file() else (0, 0)
    return out


def write_sweep(tmp_path: Path, *overrides: str, name: str = "checked") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "experiment: smoke\n"
        f"overrides: {json.dumps(list(overrides))}\n"
        "name: 'lr{optim.lr}'\naxes:\n  - key: optim.lr\n    values: [0.001, 0.002]\n"
    )
    return str(path)


def generated_sweep(tmp_path: Path, *extra: str) -> str:
    """A smoke sweep that generates its data at submit time (nothing of it exists before)."""
    roots = [f"evaluation.data_roots.{t}={tmp_path / 'eval' / t}" for t in ("davis", "photo_davis", "jhmdb", "vip")]
    return write_sweep(tmp_path, f"data.root={tmp_path / 'gen'}", f"output_root={tmp_path / 'runs'}", *roots, *extra)


def short_video_root(tmp_path: Path) -> Path:
    """41 listed videos, one of them shorter than data.max_gap + 1 = 13 frames: a note, not a problem."""
    root = listed_root(tmp_path, n=40, extra=[LabelEntry("train/c0/short0.mp4", 0, "c0", 10)])
    (root / "train/c0/short0.mp4").touch()
    return root


def test_a_slurm_sweep_without_sbatch_is_refused_and_writes_nothing(tmp_path, monkeypatch, capsys):
    sweep = generated_sweep(tmp_path, "cluster=slurm")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "earlier.txt").write_text("a file of an earlier sweep\n")
    (tmp_path / "no-slurm").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))  # a machine without SLURM's commands
    before = tree(tmp_path / "runs", tmp_path / "gen", tmp_path / "eval")
    assert main([f"sweep={sweep}"]) == 2
    err = capsys.readouterr().err
    assert "cluster=slurm but `sbatch` is not on PATH" in err and "(all runs)" in err and "nothing was submitted" in err
    assert tree(tmp_path / "runs", tmp_path / "gen", tmp_path / "eval") == before


def test_a_slurm_dry_run_without_slurm_shows_the_plan_not_a_traceback(tmp_path, monkeypatch, capsys):
    """submitit renders the sbatch script only where `srun` is: the dry run used to end in its RuntimeError."""
    (tmp_path / "no-slurm").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))
    assert main(["experiment=smoke", "cluster=slurm", f"output_root={tmp_path / 'runs'}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# not shown: `srun` is not on PATH here" in out and "`sbatch` is not on PATH" in out, out


def test_a_sweep_is_judged_once_per_group_of_equal_resources(tmp_path, monkeypatch):
    root = listed_root(tmp_path)
    runs = (["optim.lr=0.1"], ["optim.lr=0.2"], ["cluster.cpus_per_task=1"])  # two groups of equal resources
    cfgs = [cfg_with(tmp_path, root, "experiment=smoke", "data.batch_size=2", "cluster=slurm", *run) for run in runs]
    judged = []  # a spy on this project's method: which resources the backend was asked about

    def refusals(self, resources):
        judged.append(resources)
        return ["refused"]

    monkeypatch.setattr(type(make_backend("slurm", tmp_path)), "refusals", refusals)
    assert validate(cfgs, SweepContext("s", None)).problems == ["refused (all runs)"]  # each problem once
    assert sorted(r.cpus_per_task for r in judged) == sorted({1, cfgs[0].cluster.cpus_per_task})


def test_slurm_missing_is_a_problem_of_the_slurm_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert make_backend("slurm", tmp_path).refusals(Resources()) == [
        "cluster=slurm but `sbatch` is not on PATH; submit from a SLURM login node, or use cluster=local"
    ]
    assert make_backend("local", tmp_path).refusals(Resources()) == []
    assert not (tmp_path / "validate").exists() and os.listdir(tmp_path) == []  # judging writes nothing


def test_a_slurm_controller_that_cannot_be_reached_is_named_with_the_fix(tmp_path, monkeypatch):
    if shutil.which("sbatch") is None:
        unavailable("SLURM's client commands (sbatch) are not installed")
    conf = tmp_path / "slurm.conf"  # a controller on a port where nothing listens
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=9\nMessageTimeout=2\n"
        "NodeName=localhost CPUs=1\nPartitionName=p Nodes=localhost Default=YES\n"
    )
    monkeypatch.setenv("SLURM_CONF", str(conf))
    (problem,) = make_backend("slurm", tmp_path / "jobs").refusals(Resources())
    assert problem.startswith("cannot reach the SLURM controller (") and "check SLURM_CONF" in problem
    assert "python -m localslurm start" in problem


def test_a_sweep_runs_on_one_backend(tmp_path):
    cfgs = [cfg_with(tmp_path, tmp_path / "v", f"cluster={b}") for b in ("local", "debug")]
    assert backend_problems(cfgs) == [
        "a sweep runs on one backend; its runs ask for ['debug', 'local']: set cluster= once, in overrides"
    ]
    assert backend_problems(cfgs[:1]) == []


def test_a_sweep_notes_what_a_single_run_notes(tmp_path, caplog):
    root = short_video_root(tmp_path)
    single = cfg_with(tmp_path, root, "experiment=smoke", "data.batch_size=2", "data.max_gap=12")
    assert any(SHORT_VIDEO_NOTE in n for n in validate([single]).notes)
    sweep = write_sweep(
        tmp_path,
        *merged(f"data.root={root}", "data.synthetic_videos=0", "data.batch_size=2", "data.max_gap=12"),
        "evaluation.tasks=[]",
        f"output_root={tmp_path / 'runs'}",
    )
    with caplog.at_level("WARNING"):
        assert main([f"sweep={sweep}", "--dry-run"]) == 0
    assert caplog.text.count(SHORT_VIDEO_NOTE) == 1  # once for the sweep, not once per run


def test_a_sweep_shows_the_device_warning_a_single_run_shows(tmp_path, capsys):
    sweep = generated_sweep(tmp_path, "runtime.compile=true")
    assert main([f"sweep={sweep}", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: runtime.compile=true on a CPU run") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "gen").exists()  # a dry run writes nothing
