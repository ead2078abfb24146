"""Result records, the aggregator, and evaluation scheduling per checkpoint (no scheduler needed:
the debug backend runs evaluation jobs in-process)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from eval.aggregate import Pruned, aggregate_records, build_table
from eval.aggregate import main as aggregate_main
from eval.protocol import protocol_hash
from eval.records import ResultRecord, find_record_files, read_records, write_record
from launch.config import absolutize, compose, train_config
from launch.dispatch import ensure_generated_data
from launch.evaluations.claims import claim, failure
from launch.evaluations.expected import eval_config_for, eval_dir, expected
from launch.evaluations.job import EvaluationJob
from launch.evaluations.schedule import schedule
from launch.results import aggregate_runs
from launch.rundir import RunDirectory
from rsp.distributed import DistEnv
from rsp.train import train


def record(run_id="r1", step=10, task="davis", metrics=None, created=None, axes=None, name="run") -> ResultRecord:
    return ResultRecord(
        run_id=run_id,
        run_name=name,
        config_hash="c" * 64,
        step=step,
        task=task,
        protocol_hash="p" * 64,
        protocol={"preset": "rsp"},
        metrics=metrics or {"J&F-Mean": 0.5, "J-Mean": 0.45, "F-Mean": 0.55},
        checkpoint_sha256="s" * 64,
        checkpoint_path="/x.pt",
        code_version="abc",
        job_id="1",
        wall_time_s=1.0,
        sweep_axes=axes or {},
        model_name="rsp_vit_tiny_patch8",
        created=created or time.time(),
    )


def record_path(root: Path, r: ResultRecord) -> Path:
    return root / f"{r.run_name}-{r.run_id}" / "evals" / f"step_{r.step:08d}" / f"{r.task}-{r.protocol_hash[:12]}" / "record.json"


def _write_one(args) -> None:
    root, i = args
    r = record(run_id=f"run{i:03d}", step=i)
    write_record(record_path(Path(root), r), r)


def test_64_concurrent_writers_give_64_readable_records(tmp_path):
    with multiprocessing.get_context("fork").Pool(16) as pool:
        pool.map(_write_one, [(str(tmp_path), i) for i in range(64)])
    files = find_record_files(tmp_path)
    records, warnings = read_records(files)
    assert len(files) == 64 and len(records) == 64 and warnings == []
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or p.name.startswith(".partial-")]


def test_corrupt_partial_and_conflicting_records(tmp_path, caplog):
    good = record(step=10)
    write_record(record_path(tmp_path, good), good)
    partial = record_path(tmp_path, record(step=20))
    partial.parent.mkdir(parents=True)
    partial.write_text('{"run_id": "r1", "step": 20, "metr')
    nan = record(step=30, metrics={"J&F-Mean": float("nan")})
    write_record(record_path(tmp_path, nan), nan)
    older = record(step=40, metrics={"J&F-Mean": 0.1}, created=100.0)
    newer = record(step=40, metrics={"J&F-Mean": 0.9}, created=200.0)
    write_record(record_path(tmp_path, older), older)
    other_place = tmp_path / "copy-r1" / "evals" / "step_00000040" / "davis-dup" / "record.json"
    write_record(other_place, newer)
    records, warnings = read_records(find_record_files(tmp_path))
    assert sorted(r.step for r in records) == [10, 40]
    assert next(r for r in records if r.step == 40).metrics["J&F-Mean"] == 0.9
    assert any(str(partial) in w and "unreadable" in w for w in warnings)
    assert any("metrics must be finite" in w for w in warnings)
    assert any("conflict" in w and str(other_place) in w for w in warnings)
    report = aggregate_runs(tmp_path, tmp_path / "out")  # never aborts on bad records
    assert len(report.table) == 2 and len(report.warnings) == 3


def test_aggregate_writes_table_markdown_typed_json_plots_paper_view_and_hparams(tmp_path):
    for kl, values in [(0.001, [0.50, 0.58, 0.55]), (0.01, [0.52, 0.60, 0.61])]:
        for step, jf in zip((100, 200, 300), values, strict=True):
            axes = {"model.kl_scale": kl}
            write_record(
                record_path(
                    tmp_path,
                    r := record(
                        f"id{kl}",
                        step,
                        "davis",
                        {"J&F-Mean": jf, "J-Mean": jf - 0.02, "F-Mean": jf + 0.02},
                        axes=axes,
                        name=f"kl{kl}",
                    ),
                ),
                r,
            )
            write_record(
                record_path(
                    tmp_path, r := record(f"id{kl}", step, "jhmdb", {"PCK@0.1": 0.4, "PCK@0.2": 0.7}, axes=axes, name=f"kl{kl}")
                ),
                r,
            )
    report = aggregate_runs(tmp_path, tmp_path / "out")
    table = pd.read_json(tmp_path / "out" / "results.table.json", orient="table")
    assert len(table) == 6 and set(table["axis:model.kl_scale"]) == {0.001, 0.01}
    best = table[table["best"]].set_index("run")["step"].to_dict()
    assert best == {"kl0.001": 200, "kl0.01": 300}
    assert (tmp_path / "out" / "results.csv").read_text().count("\n") == 7
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| kl0.01 | id0.01 | 300 | rsp_vit_tiny_patch8 | 0.01 | 61.0 | 59.0 | 63.0 | 40.0 | 70.0 |" in md
    paper = (tmp_path / "out" / "paper.md").read_text()
    assert "| RSP (paper) | 60.1 | 57.4 | 62.8 | 33.8 | 44.6 | 73.4 |" in paper
    assert "| ours: kl0.01 (step 300, rsp_vit_tiny_patch8) | 61.0 | 59.0 | 63.0 | - | 40.0 | 70.0 |" in paper
    names = {p.name for p in report.plots}
    assert {"davis_J_F-Mean_vs_step.png", "davis_J_F-Mean_vs_model.kl_scale.png", "jhmdb_PCK_0.1_vs_step.png"} <= names
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG" for p in report.plots)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((tmp_path / "out" / "tensorboard").iterdir())))
    acc.Reload()
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))


def test_step0_gains_paper_baseline_and_mean_std_over_seeds(tmp_path):
    """A sweep of 2 settings x 3 seeds on a real dataset, each run with step 0 and step 100."""
    finals = {
        ("discrete", 0): 0.40,
        ("discrete", 1): 0.44,
        ("discrete", 2): 0.45,
        ("none", 0): 0.38,
        ("none", 1): 0.41,
        ("none", 2): 0.44,
    }
    for (latent, seed), final in finals.items():
        axes = {"model.latent": latent, "runtime.seed": seed}
        for step, jf in ((0, 0.25 + 0.01 * seed), (100, final)):
            r = record(
                f"{latent}{seed}",
                step,
                "davis",
                {"J&F-Mean": jf, "J-Mean": jf, "F-Mean": jf},
                axes=axes,
                name=f"{latent}-s{seed}",
            )
            write_record(record_path(tmp_path, r), r)
    report = aggregate_runs(tmp_path, tmp_path / "out", tensorboard=False)
    table = report.table
    assert table.loc[(table["run"] == "none-s2") & (table["step"] == 100), "gain:davis:J&F-Mean"].item() == pytest.approx(0.17)
    assert set(table.loc[table["best"], "step"]) == {100} and set(table["generated"]) == {""}
    paper = (tmp_path / "out" / "paper.md").read_text()
    assert "| ours: none-s2 (step 100, rsp_vit_tiny_patch8) | 44.0 | 44.0 | 44.0 | - | - | - |" in paper
    assert "| ours: none-s2 (step 0: initialization, rsp_vit_tiny_patch8) | 27.0 | 27.0 | 27.0 | - | - | - |" in paper
    seeds = pd.read_csv(tmp_path / "out" / "over_seeds.csv")
    assert list(seeds.columns[:2]) == ["axis:model.latent", "step"] and len(seeds) == 4 and set(seeds["seeds"]) == {3}
    final = seeds[(seeds["axis:model.latent"] == "discrete") & (seeds["step"] == 100)].iloc[0]
    assert final["davis:J&F-Mean mean"] == pytest.approx(0.43) and final["davis:J&F-Mean std"] == pytest.approx(
        0.026458, abs=1e-6
    )
    assert final["gain:davis:J&F-Mean mean"] == pytest.approx(0.17)  # (0.15 + 0.18 + 0.18) / 3
    assert "| discrete | 100 | 43.0 ± 2.6 |" in (tmp_path / "out" / "over_seeds.md").read_text()
    assert "over seeds (runtime.seed): mean ± std" in report.summary()
    assert any(p.name == "davis_J_F-Mean_over_seeds.png" and p.stat().st_size > 1000 for p in report.plots)


def test_a_single_point_still_plots(tmp_path):
    write_record(record_path(tmp_path, r := record(metrics={"mIoU": 0.3}, task="vip", axes={"data.max_gap": 48})), r)
    report = aggregate_runs(tmp_path, tmp_path / "out")
    assert len(report.plots) == 2 and all(p.stat().st_size > 1000 for p in report.plots)


def test_aggregating_nothing_says_so(tmp_path):
    assert "no result records found" in aggregate_runs(tmp_path, tmp_path / "out").summary()


# --- scheduling evaluations per checkpoint -----------------------------------------------------------


def test_aggregation_works_on_records_alone(tmp_path):
    """eval/ needs no run directory: records in memory, and what the launcher joined in (a pruned run)."""
    records = [record(run_id="r1", step=0), record(run_id="r1", step=10), record(run_id="r2", name="other", step=10)]
    report = aggregate_records(
        records, tmp_path / "out", ["a warning"], {"r2": Pruned(10, 2, 2, 0.5)}, plots=False, tensorboard=False
    )
    rows = report.table.set_index(["run_id", "step"])
    assert rows.loc[("r2", 10), "pruned_at"] == 10 and rows.loc[("r2", 10), "pruned_rank"] == "2/2"
    assert pd.isna(rows.loc[("r1", 10), "pruned_at"]) and report.warnings == ["a warning"]
    assert (tmp_path / "out" / "results.csv").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_records_command_reads_records_at_any_depth_and_sends_sweeps_to_the_launcher(tmp_path, capsys):
    for depth, r in enumerate((record(run_id="r1"), record(run_id="r2"))):
        write_record(tmp_path / "copied" / ("x/" * depth) / f"{r.run_id}.d" / "record.json", r)
    assert aggregate_main([str(tmp_path / "copied"), "--no-plots", "--no-tensorboard"]) == 0
    assert sorted(pd.read_csv(tmp_path / "copied" / "results" / "results.csv")["run_id"]) == ["r1", "r2"]
    with pytest.raises(SystemExit):
        aggregate_main([str(tmp_path / "copied"), "--sweep", "s"])
    assert "python launch/results.py" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(train_videos, tmp_path_factory):
    """A tiny run with milestone checkpoints at steps 2 and 4, trained directly (no scheduler)."""
    base = tmp_path_factory.mktemp("results")
    cfg = absolutize(
        compose(
            [
                f"data.root={train_videos}",
                "data.synthetic_videos=0",
                "data.num_workers=0",
                "data.batch_size=2",
                "data.max_gap=8",
                "model.img_size=32",
                "schedule.total_steps=4",
                "schedule.warmup_steps=1",
                "checkpoint.every_steps=1",
                "checkpoint.milestone_every_steps=2",
                "checkpoint.keep_last=1",
                "cluster=debug",
                f"output_root={base / 'runs'}",
                "evaluation.tasks=[davis,vip]",
                "evaluation.synthetic=true",
                f"evaluation.data_roots.davis={base / 'davis'}",
                f"evaluation.data_roots.vip={base / 'vip'}",
                "evaluation.overrides.davis.frame_size=64",
                "evaluation.overrides.vip.frame_size=96",
                "evaluation.overrides.davis.cpu_threads=1",  # a tiny model: one thread is the fastest
                "evaluation.overrides.vip.cpu_threads=1",
            ]
        ),
        base,
    )
    ensure_generated_data(cfg)
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    train(train_config(cfg), DistEnv(), run.path)
    return run


def test_retention_keeps_milestones_and_pinned_checkpoints(trained_run):
    steps = [m.step for m in trained_run.manifests()]
    assert steps == [
        0,
        2,
        3,
        4,
    ]  # keep_last=1 removed step 1; 0 (the initialization), 2 and 4 are milestones; 3 the newest ordinary
    store = trained_run.checkpoints
    store.pin(3, "pending-eval")
    assert store.prune(keep_last=0) == [] and (store.dir / "step_00000003.pt").exists()
    store.unpin(3, "pending-eval")
    assert store.prune(keep_last=1) == []


def test_each_evaluation_is_claimed_at_most_once(tmp_path):
    assert claim(tmp_path / "e") and not claim(tmp_path / "e")


@pytest.mark.slow  # a training run and its evaluations: ~9 s
def test_backfill_evaluates_milestones_once_and_records_provenance(trained_run):
    due = expected(trained_run)
    assert [(s, t) for s, t, _ in due] == [(0, "davis"), (0, "vip"), (2, "davis"), (2, "vip"), (4, "davis"), (4, "vip")]
    ids, set_aside = schedule(trained_run, None, "debug")
    assert len(ids) == 3 and set_aside == []  # debug/local: one job per checkpoint runs its tasks in turn
    assert schedule(trained_run, None, "debug") == ([], [])  # at most once
    records, warnings = read_records(find_record_files(trained_run.path.parent))
    assert len(records) == 6 and not warnings
    r = next(r for r in records if r.step == 4 and r.task == "davis")
    info = trained_run.info()
    manifest = next(m for m in trained_run.manifests() if m.step == 4)
    assert (r.run_id, r.config_hash, r.checkpoint_sha256) == (info.run_id, info.config_hash, manifest.sha256)
    assert r.protocol["preset"].startswith("rsp") and 0 <= r.metrics["J&F-Mean"] <= 1 and r.wall_time_s > 0
    assert not list((trained_run.path / "checkpoints" / "pins").glob("*"))  # unpinned once recorded
    table = build_table(records)
    assert list(table["step"]) == [0, 2, 4] and table["best"].sum() == 1 and not table.loc[0, "best"]  # step 0: the baseline
    for metric in ("davis:J&F-Mean", "davis:F-Decay", "vip:mIoU"):  # every metric has its gain over step 0
        assert list(table["gain:" + metric]) == pytest.approx(list(table[metric] - table.loc[0, metric]))
    assert set(table["generated"]) == {"davis, vip"}  # both sets were generated (their markers say so)
    report = aggregate_runs(trained_run.path.parent, trained_run.path.parent / "results", plots=False, tensorboard=False)
    paper = (report.out / "paper.md").read_text()
    assert "| ours:" not in paper and "Not shown: 1 run(s) evaluated only on generated sets" in paper
    assert "gain:davis:J&F-Mean" in report.summary() and "generated: tasks evaluated on generated sets" in report.summary()


def test_an_evaluation_whose_checkpoint_vanished_fails_naming_it(trained_run, tmp_path):
    job = EvaluationJob(str(trained_run.path), 1, ["davis"])  # step 1 was pruned by retention
    with pytest.raises(RuntimeError, match="evaluation of step 1 failed for davis"):
        job()
    cfg = trained_run.config()
    ecfg = eval_config_for(cfg, "davis", trained_run.path / "checkpoints" / "step_00000001.pt", Path("."))
    error = failure(eval_dir(trained_run, 1, "davis", protocol_hash(ecfg))).error
    assert "step_00000001.pt" in error and "vanished" in error


def test_runs_on_two_benchmarks_get_one_figure_with_a_panel_each(tmp_path):
    for seed in (0, 1):
        for task, base in (("davis", 0.25), ("photo_davis", 0.20)):
            for step in (0, 100):
                jf = base + 0.05 * (step == 100) + 0.01 * seed
                r = record(f"s{seed}", step, task, {"J&F-Mean": jf, "J-Mean": jf, "F-Mean": jf}, axes={"runtime.seed": seed})
                write_record(record_path(tmp_path, r), r)
    report = aggregate_runs(tmp_path, tmp_path / "out", tensorboard=False)
    figure = tmp_path / "out" / "plots" / "benchmarks_over_seeds.png"
    assert figure in report.plots and figure.read_bytes()[:4] == b"\x89PNG"
    with Image.open(figure) as image:  # two panels side by side
        assert image.width > 1.8 * image.height
    single = tmp_path / "single"
    for step in (0, 100):
        r = record("s0", step, "davis", {"J&F-Mean": 0.3, "J-Mean": 0.3, "F-Mean": 0.3}, axes={"runtime.seed": 0})
        write_record(record_path(single, r), r)
    assert not any(p.name == "benchmarks_over_seeds.png" for p in aggregate_runs(single, single / "out", tensorboard=False).plots)
