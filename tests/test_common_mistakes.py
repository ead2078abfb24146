"""Mistakes a new user makes, found by trying every front door as one would
(docs/launching.md#common-mistakes), each answered by one clear line that names the key or file and the fix, never a traceback
and never a silent success. One table per front door, in this process: submit-time validation,
the generated and natural training sets, `python -m rsp.synthetic`, records and typed configs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_data import unavailable

from core.commandline import interrupts_in_one_line
from core.schema import ConfigError, from_dict
from eval.config import EvalConfig
from eval.davis import sequence_names
from eval.prepare import main as eval_prepare_main
from eval.protocol import problems as eval_problems
from eval.task import GENERATED_MARKER
from launch.config import absolutize, compose
from launch.evaluations.__main__ import main as evaluations_main
from launch.results import main as results_main
from launch.rundir import RunDirectory
from launch.status import main as status_main
from launch.sweeps.rungs import SweepDirectory
from launch.validation.run import problems
from rsp.natural import listed_source_problems
from rsp.photos import evaluation_only_photos, training_photos
from rsp.prepare import main as rsp_prepare_main
from rsp.synthetic import generate_dataset
from rsp.synthetic import main as synthetic_main
from rsp.video import read_labels
from testkit.launching import merged


def run_problems(tmp_path: Path, videos: Path, *overrides: str) -> list[str]:
    base = ["experiment=smoke", f"data.root={videos}", "data.synthetic_videos=0", "evaluation.tasks=[]"]
    return problems(absolutize(compose(merged(*base, f"output_root={tmp_path / 'runs'}", *overrides)), tmp_path))


def one_with(found: list[str], *parts: str) -> str:
    hits = [p for p in found if all(part in p for part in parts)]
    assert hits, f"no problem names {parts}: {found}"
    return hits[0]


# --- launch/submit.py: values of the wrong kind, typos in nested keys --------------------------------


@pytest.mark.parametrize(
    "overrides, parts",
    [
        (  # used to raise KeyError from the generated set's max_gap check
            ["data.synthetic_videos=4", "data.synthetic_scene=naturall"],
            ("data.synthetic_scene ('naturall') must be one of shapes, camouflage, natural",),
        ),
        (  # used to raise TypeError from eval.config's rules
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides={davis: {frame_size: abc}}"],
            ("evaluation.overrides.davis.frame_size ('abc') must be an int or null, not str",),
        ),
        (
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides.davis.topk=[5]"],
            ("evaluation.overrides.davis.topk ([5]) must be an int or null, not list",),
        ),
        (  # the whole-dict form used to fail in Hydra ("To append to your config use +...": the wrong fix)
            ["evaluation.tasks=[davis]", "evaluation.synthetic=true", "evaluation.overrides={davis: {framesize: 96}}"],
            ("evaluation.overrides.davis.framesize is not a field of EvalConfig", "frame_size"),
        ),
    ],
)
def test_a_submit_mistake_is_one_clear_problem(train_videos, tmp_path, overrides, parts):
    found = run_problems(tmp_path, train_videos, *[o.replace("/tmp", str(tmp_path)) for o in overrides])
    one_with(found, *parts)


def test_typed_configs_name_every_value_of_the_wrong_type():
    with pytest.raises(ConfigError) as err:
        from_dict(EvalConfig, {"frame_size": "abc", "topk": True, "task": 3, "radius": None})
    assert err.value.problems == [
        "frame_size ('abc') must be an int or null, not str",
        "topk (True) must be an int or null, not bool",
        "task (3) must be a str, not int",
    ]
    assert from_dict(EvalConfig, {"temperature": 1, "topk": None}).temperature == 1.0  # an int where a float goes is fine


# --- training data: generated and natural sets ---------------------------------------------------------


def test_a_generated_set_records_sizes_and_a_replaced_video_is_refused(tmp_path):
    root = tmp_path / "gen"
    generate_dataset(root, 2, num_classes=1, height=32, width=32, num_frames=8)
    entries = read_labels(root / "labels.csv")
    assert all(e.size == (root / e.path).stat().st_size and e.mtime_ns == -1 for e in entries)
    (root / entries[0].path).write_bytes(b"")  # truncated after labelling: used to train on silently (counted broken)
    found = run_problems(tmp_path, root, "data.batch_size=1", "data.max_gap=4", "data.min_gap=1", "model.img_size=32")
    one_with(found, "1 of the 2 videos", "changed after it was written", entries[0].path, "is a generated set: delete it")


@pytest.fixture(scope="module")
def odd_sources(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("sources")
    (tmp / "notes.jpg").write_text("not a photo")
    (tmp / "notes.txt").write_text("not a photo either")
    (tmp / "empty").mkdir()
    held_out = evaluation_only_photos()
    if held_out:
        shutil.copy(held_out[0], tmp / "copy.png")
    return {name: str(tmp / name) for name in ("notes.jpg", "notes.txt", "empty", "copy.png", "missing.jpg")}


@pytest.mark.parametrize(
    "name, parts",
    [
        ("notes.jpg", ("notes.jpg cannot be decoded", "replace the file or drop it")),  # used to be skipped with a warning
        ("notes.txt", ("notes.txt is neither a photograph", "nor a video")),
        ("empty", ("folder", "holds no photographs or videos")),
        ("missing.jpg", ("missing.jpg does not exist", "fix the path or drop it")),
        ("copy.png", ("copy.png (a copy of", "is an evaluation-only photograph")),
    ],
)
def test_a_listed_natural_source_that_cannot_serve_is_named(odd_sources, name, parts):
    if name == "copy.png" and not os.path.exists(odd_sources[name]):
        unavailable("no evaluation-only photograph is installed (Debian package opencv-doc)")
    found = listed_source_problems([odd_sources[name]])
    assert len(found) == 1, found
    one_with(found, *parts)


def test_installed_training_photos_pass():
    assert listed_source_problems([str(p) for p in training_photos()[:2]]) == []


# --- python -m rsp.synthetic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["--videos", "0"], ("--videos (0) must be >= 1",)),
        (["--videos", "2", "--height", "7"], ("height (7) and width (128) must be even", "choose even sizes")),
        (["--videos", "2", "--scene", "natural", "--sources", "/nonexistent/x.jpg"], ("/nonexistent/x.jpg does not exist",)),
        (["--videos", "2", "--frames", "1"], ("frames (1) must be >= 2",)),  # used to write videos without a frame pair
    ],
)
def test_the_synthetic_command_refuses_in_one_line(tmp_path, capsys, argv, parts):
    rc = synthetic_main(["dataset", "--root", str(tmp_path / "set"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and all(p in err for p in parts) and "Traceback" not in err, err
    assert not (tmp_path / "set" / "labels.csv").exists()


def test_the_synthetic_command_refuses_a_root_it_cannot_write(capsys):
    with pytest.raises(SystemExit):  # used to print a bare "[Errno 2] No such file or directory"
        synthetic_main(["dataset", "--root", "/proc/rsp-videos", "--videos", "2"])
    assert "/proc/rsp-videos cannot be written (No such file or directory); choose another folder" in capsys.readouterr().err


# --- launch/results.py and launch/status.py ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, parts",
    [
        (
            ["--sweep", "nosuch"],
            ("--sweep nosuch matches no run under", "sweeps with runs there: none"),
        ),  # used to print "no records"
        (["--out", "/proc/rsp-results"], ("--out /proc/rsp-results cannot be written", "choose another folder")),  # a traceback
        (["--out", "FILE"], ("cannot be written (", "is not a directory)")),  # a traceback
    ],
)
def test_results_refuses_a_wrong_sweep_or_output_folder(tmp_path, capsys, argv, parts):
    (tmp_path / "runs").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        results_main([str(tmp_path / "runs"), *[a.replace("FILE", str(tmp_path / "file")) for a in argv]])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and all(p in err for p in parts), err
    assert list((tmp_path / "runs").iterdir()) == []  # nothing written


def test_status_and_results_say_when_the_output_root_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for main in (status_main, results_main):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "file")])
        assert f"output root {tmp_path / 'file'} is a file, not a directory" in capsys.readouterr().err


def test_a_run_directory_given_as_the_output_root_names_its_parent(tmp_path, capsys):
    """status said "no runs", results "no result records found" (the run had some), backfill nothing to do."""
    cfg = compose(["cluster=debug", f"output_root={tmp_path}", "name=one"])
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    for main, argv in ((status_main, []), (results_main, []), (evaluations_main, ["backfill"])):
        with pytest.raises(SystemExit):
            main([*argv, str(run.path)])
        assert f"{run.path} is a run directory, not an output root; pass the folder that holds it: {tmp_path}" in (
            capsys.readouterr().err
        )


# --- python -m eval.prepare, python -m rsp.prepare, python -m eval.run ----------------------------------


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["vip", "--root", "ROOT", "--archive", "MISSING"], ("error: vip: ", "MISSING does not exist", "pass --archive")),
        (["vip", "--root", "ROOT", "--archive", "TMP"], ("error: vip: ", "is a directory, not the archive")),
        (["vip", "--root", "ROOT", "--archive", "JUNK"], ("error: vip: ", "is neither a zip nor a tar archive")),
        (["photo_davis", "--root", "FILE"], ("--root", "cannot be written", "is not a directory", "choose another folder")),
    ],
)
def test_eval_prepare_refuses_in_one_line(tmp_path, capsys, argv, parts):
    (tmp_path / "junk.zip").write_bytes(os.urandom(300))
    (tmp_path / "file").write_text("x")
    names = {"ROOT": "root", "MISSING": "missing.zip", "TMP": "", "JUNK": "junk.zip", "FILE": "file"}
    argv = [str(tmp_path / names[a]) if a in names else a for a in argv]
    try:
        rc = eval_prepare_main(argv)
    except SystemExit as exit_:  # argparse's error: usage and one line
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert all(p.replace("MISSING", str(tmp_path / "missing.zip")) in err for p in parts), err
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["labels", "--root", "MISSING"], ("--root", "does not exist", "python -m rsp.prepare all starts one")),
        (["labels", "--root", "FILE"], ("is a file, not a directory",)),
        (["labels", "--root", "EMPTY", "--jobs", "-1"], ("--jobs (-1) must be >= 0",)),
        (["rescale", "--root", "EMPTY", "--crf", "99"], ("--crf (99) must lie in [0, 51]",)),
    ],
)
def test_rsp_prepare_refuses_bad_arguments(tmp_path, capsys, argv, parts):
    code, err = refused(rsp_prepare_main, argv, tmp_path, capsys)
    assert code == 2 and all(p in err for p in parts), err


def refused(main, argv: list[str], tmp_path: Path, capsys) -> tuple[int, str]:
    """A front door's argparse refusal: its exit code and stderr. In `argv`, MISSING, FILE and EMPTY
    stand for a path that does not exist, a file and an empty directory."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    names = {"MISSING": "missing", "FILE": "file", "EMPTY": "empty"}
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / names[a]) if a in names else a for a in argv])
    return exit_.value.code, capsys.readouterr().err


def test_a_prepare_step_with_nothing_to_do_fails(tmp_path, caplog):
    assert rsp_prepare_main(["rescale", "--root", str(tmp_path)]) == 2  # used to report "0 done" and exit 0
    assert "rescale: found nothing to do under" in caplog.text


def test_eval_config_refuses_an_output_dir_that_cannot_be_written(tmp_path):
    cfg = EvalConfig(checkpoint="x.pt", data_root=str(tmp_path), output_dir="/proc/rsp-eval")
    assert any(p.startswith("output_dir (/proc/rsp-eval) cannot be written") for p in cfg.field_problems())


def test_a_davis_layout_names_its_splits_and_the_task_to_prepare(tmp_path):
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("a\n")
    with pytest.raises(FileNotFoundError, match=r"split='vall' does not exist; splits in .*: val"):
        sequence_names(tmp_path, "vall", "480p")
    with pytest.raises(FileNotFoundError, match=r"python -m eval.prepare photo_davis --root"):  # was: ... prepare davis
        sequence_names(tmp_path / "nothing", "val", "480p", task="photo_davis")


def test_the_synthetic_command_never_replaces_another_datasets_labels(tmp_path, capsys):
    generate_dataset(tmp_path, 2, num_classes=1, height=32, width=32, num_frames=8)
    before = (tmp_path / "labels.csv").read_text()
    assert synthetic_main(["dataset", "--root", str(tmp_path), "--videos", "1"]) == 2  # used to rewrite labels.csv
    assert "already holds a dataset (2 shapes videos)" in capsys.readouterr().err
    assert (tmp_path / "labels.csv").read_text() == before


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["backfill", "MISSING"], ("output root", "does not exist")),  # used to print nothing and exit 0
        (["backfill", "FILE"], ("is a file, not a directory",)),
        (["backfill", "EMPTY", "--backend", "slrum"], ("invalid choice: 'slrum'", "'slurm'")),  # used to submit nothing, silently
        (  # used to answer "did you mean --step?": an option of the `schedule` subcommand
            ["backfill", "EMPTY", "--step", "4"],
            ("--step: not an option of python -m launch.evaluations; options: --help, --backend, --all-checkpoints",),
        ),
    ],
)
def test_backfill_refuses_a_wrong_root_or_backend(tmp_path, capsys, argv, parts):
    code, err = refused(evaluations_main, argv, tmp_path, capsys)
    assert code == 2 and all(p in err for p in parts), err


def test_backfill_says_when_there_is_nothing_to_do(tmp_path, capsys):
    assert evaluations_main(["backfill", str(tmp_path)]) == 0
    assert f"no runs under {tmp_path}: nothing to backfill" in capsys.readouterr().out


def test_a_ctrl_c_ends_a_front_door_in_one_line(monkeypatch, capsys):
    """launch/submit.py and the other front doors install this before their heavy imports: a ctrl-C
    while torch loads used to print a 40-line traceback."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    interrupts_in_one_line("launch/submit.py", "the same command again submits only what is missing")
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    err = capsys.readouterr().err
    assert err == "\nlaunch/submit.py: interrupted (ctrl-C); the same command again submits only what is missing\n"


def test_a_python_without_the_projects_packages_is_told_which_to_use(monkeypatch, capsys):
    """`python launch/submit.py` with a Python outside the environment: a ModuleNotFoundError traceback."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    interrupts_in_one_line("python -m eval.run", "run it again")
    sys.excepthook(ModuleNotFoundError, ModuleNotFoundError("No module named 'submitit'", name="submitit"), None)
    err = capsys.readouterr().err
    assert err.startswith("python -m eval.run: No module named 'submitit' in this Python (") and "Traceback" not in err
    assert "./bootstrap.sh python -m eval.run ..." in err, err


@pytest.mark.parametrize("damaged", ["run.json", "status.json", "attempts/000.json", "progress.json", "submissions/000.json"])
def test_status_names_a_run_whose_records_are_damaged_and_shows_the_others(tmp_path, capsys, damaged):
    """A hand-edited or truncated run record used to make status print a traceback and show nothing."""
    runs = []
    for name in ("good", "bad"):
        cfg = compose(["cluster=debug", f"output_root={tmp_path}", f"name={name}"])
        run = RunDirectory.for_config(cfg)
        run.create(cfg)
        runs.append(run)
    (runs[1].path / damaged).parent.mkdir(exist_ok=True)
    (runs[1].path / damaged).write_text("{bad")
    assert status_main([str(tmp_path), "--no-advance"]) == 0
    out = capsys.readouterr().out
    assert runs[0].path.name in out and "1 run(s) not shown: a record cannot be read" in out, out
    assert f"{runs[1].path.name}: {runs[1].path / damaged}: unreadable (" in out and "restore it from a copy" in out, out
    assert (runs[1].path / damaged).read_text() == "{bad"  # nothing was changed


def test_status_names_a_run_whose_run_json_was_deleted(tmp_path, capsys):
    """A run directory with checkpoints but no run.json used to vanish: status said "no runs"."""
    cfg = compose(["cluster=debug", f"output_root={tmp_path}", "name=orphan"])
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    (run.path / "checkpoints").mkdir()
    (run.path / "run.json").unlink()
    assert status_main([str(tmp_path), "--no-advance"]) == 0
    out = capsys.readouterr().out
    assert f"{run.path.name}: {run.path / 'run.json'} is missing (the run's checkpoints/ is there)" in out, out


def test_following_a_run_whose_directory_was_deleted_says_so(tmp_path, capsys):
    """rm -rf of the output root while a run trained: the terminal showed the job's FileNotFoundError and
    pointed at logs that no longer exist."""
    from launch.follow import follow

    assert follow(RunDirectory(tmp_path / "runs" / "gone-0123456789ab"), "not-a-pid", poll_s=0) == 1
    assert "its run directory" in (out := capsys.readouterr().out) and "no longer exists (deleted or moved" in out, out


def test_status_names_a_sweep_member_whose_directory_was_deleted(tmp_path, capsys):
    """Deleting a run directory to free space made the run vanish from its sweep's table without a word."""
    runs = []
    for name, lr in (("kept", 0.1), ("deleted", 0.2)):
        cfg = compose(["cluster=debug", f"output_root={tmp_path}", f"name={name}", f"optim.lr={lr}"])
        runs.append(RunDirectory.for_config(cfg))
        runs[-1].create(cfg)
        runs[-1].record_sweep("x", {"optim.lr": 0.1})
    SweepDirectory(tmp_path, "x").write_record(None, {r.path.name.rsplit("-", 1)[1]: r.path.name for r in runs})
    shutil.rmtree(runs[1].path)
    assert status_main([str(tmp_path), "sweep=x", "--no-advance"]) == 0
    out = capsys.readouterr().out
    assert f"sweep x: 1 member(s) have no run directory (deleted or moved): {runs[1].path.name}" in out, out


def test_status_names_a_damaged_sweep_record(tmp_path, capsys):
    cfg = compose(["cluster=debug", f"output_root={tmp_path}", "name=member"])
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    run.record_sweep("x", {"optim.lr": 0.1})
    (tmp_path / "sweeps" / "x").mkdir(parents=True)
    (tmp_path / "sweeps" / "x" / "sweep.json").write_text('{"trunc')
    assert status_main([str(tmp_path), "sweep=x", "--no-advance"]) == 2  # used to be a traceback
    err = capsys.readouterr().err
    assert "sweeps/x/sweep.json: unreadable (" in err and "restore it from a copy, or move it aside" in err, err


def test_status_and_results_take_the_sweep_file_path_submit_took(tmp_path, capsys):
    """sweep=path/to/exp.yaml is how submit takes a sweep outside sweeps/; status and results answered
    "matches no run" to it."""
    cfg = compose(["cluster=debug", f"output_root={tmp_path}", "name=member"])
    run = RunDirectory.for_config(cfg)
    run.create(cfg)
    run.record_sweep("exp", {"optim.lr": 0.1})
    assert status_main([str(tmp_path), f"sweep={tmp_path / 'elsewhere' / 'exp.yaml'}", "--no-advance"]) == 0
    assert run.path.name.split("-")[0] in capsys.readouterr().out
    assert results_main([str(tmp_path), "--sweep", "sweeps/exp.yaml", "--no-plots", "--no-tensorboard"]) == 0
    assert "no result records found" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # used to print the table, then a ValueError from time.sleep
        status_main([str(tmp_path), "--watch", "-5"])
    assert "--watch (-5.0) must be >= 0 seconds" in capsys.readouterr().err


def test_status_backfill_and_results_on_a_read_only_output_root(tmp_path, capsys):
    """A read-only copy of an output root (a bind mount): backfill and results used to end in an
    OSError traceback; status shows the table and says that it decided nothing."""
    cfg = compose(["cluster=debug", f"output_root={tmp_path / 'runs'}", "name=kept"])
    RunDirectory.for_config(cfg).create(cfg)
    (tmp_path / "ro").mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "runs"), str(tmp_path / "ro")], capture_output=True)
    if mounted.returncode != 0:
        unavailable(f"cannot bind-mount a read-only copy (needs root): {mounted.stderr.decode().strip()}")
    try:
        assert status_main([str(tmp_path / "ro")]) == 0
        assert f"{tmp_path / 'ro'} cannot be written (Read-only file system): nothing was decided" in capsys.readouterr().out
        for main, argv in ((evaluations_main, ["backfill"]), (results_main, [])):
            with pytest.raises(SystemExit):
                main([*argv, str(tmp_path / "ro")])
            assert "cannot be written (Read-only file system)" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)


@pytest.mark.parametrize(
    "argv, parts",
    [
        (["--ratio", "0.5"], ("--ratio 0.5: subsets are not supported",)),
        (["--batch_size", "0"], ("data.batch_size (0) must be >= 1",)),
        (["--data_path", "MISSING"], ("data.root (", "missing) is not a directory")),  # the default is /data/kinetics400
    ],
)
def test_the_papers_command_line_refuses_in_one_line(tmp_path, capsys, argv, parts):
    """main_pretrain_rsp.py (the reference's command) printed a traceback for each of these."""
    from rsp.paper_cli import run_as_program  # torch: only this test needs it

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        argv = [a.replace("MISSING", str(tmp_path / "missing")) for a in argv]
        assert run_as_program([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and all(p in err for p in parts) and "Traceback" not in err, err


@pytest.mark.parametrize("task, other", [("photo_davis", "davis"), ("davis", "photo_davis")])
def test_a_generated_set_of_another_task_is_refused(tmp_path, task, other):
    """photo_davis and davis share a layout: the one used to be scored and labelled as the other."""
    (tmp_path / GENERATED_MARKER).write_text(f"generated {other} set (design) {{}}\n")
    found = eval_problems(EvalConfig(checkpoint="x.pt", task=task, data_root=str(tmp_path)))
    one_with(found, f"holds the generated {other} set, not a {task} set", f"set task={other}")
    assert not eval_problems(EvalConfig(checkpoint="x.pt", task=other, data_root=str(tmp_path)))
