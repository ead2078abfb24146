"""Videos replaced after the labels step: the labels file records each file's size and mtime, the
submit-time data check (launch/validation/data.py) refuses the data naming the files, and the
loader skips and counts a file that changed after submit, with the reason."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
from fixtures_data import copy_dataset, data_config

from launch.validation.data import listing_problems, survey
from rsp.data import FramePairDataset
from rsp.prepare import write_labels_file
from rsp.video import read_labels, write_labels


def labelled_copy(synthetic_root: Path, dst: Path) -> Path:
    """The generated dataset with each file's current size and mtime in its labels file."""
    root = copy_dataset(synthetic_root, dst)
    entries = []
    for entry in read_labels(root / "labels.csv"):
        stat = (root / entry.path).stat()
        entries.append(entry._replace(size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    write_labels(root / "labels.csv", entries)
    return root


def replace_two(root: Path) -> tuple[str, str]:
    """Replace one video by another (size changes), touch a second (only its mtime changes)."""
    first, second, third = (e.path for e in read_labels(root / "labels.csv")[:3])
    shutil.copyfile(root / third, root / first)  # copyfile: new contents and a new mtime
    os.utime(root / second, ns=((root / second).stat().st_atime_ns, (root / second).stat().st_mtime_ns + 10**9))
    return first, second


def test_the_labels_step_records_size_and_mtime(synthetic_root, tmp_path):
    root = copy_dataset(synthetic_root, tmp_path / "data")
    write_labels_file(root, root / "train", jobs=1, decoders=["pyav"])
    for entry in read_labels(root / "labels.csv"):
        stat = (root / entry.path).stat()
        assert (entry.size, entry.mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_submit_refuses_files_changed_after_labelling_naming_them(synthetic_root, tmp_path):
    clean = labelled_copy(synthetic_root, tmp_path / "clean")
    assert listing_problems(survey(clean, "auto"), clean) == []
    root = labelled_copy(synthetic_root, tmp_path / "data")
    first, second = replace_two(root)
    (problem,) = listing_problems(survey(root, "auto"), root)
    assert "2 of the 12 videos" in problem and first in problem and second in problem
    assert "python -m rsp.prepare labels --root" in problem and "cp -p" in problem


def test_the_loader_skips_and_counts_a_file_changed_after_submit(synthetic_root, tmp_path, caplog):
    root = labelled_copy(synthetic_root, tmp_path / "data")
    ds = FramePairDataset(data_config(root), img_size=16, seed=0)
    before = ds[(0, 0)], ds[(0, 1)]
    assert [item["broken"] for item in before] == [0, 0]
    first, second = replace_two(root)
    with caplog.at_level(logging.WARNING, logger="rsp.data"):
        after = ds[(0, 0)], ds[(0, 1)]
    assert [item["broken_paths"] for item in after] == [[str(root / first)], [str(root / second)]]
    assert caplog.text.count("changed after `python -m rsp.prepare labels` recorded it") == 2


@pytest.mark.parametrize("columns", [4, 7])
def test_labels_written_before_sizes_were_recorded_are_not_checked(synthetic_root, tmp_path, columns):
    root = copy_dataset(synthetic_root, tmp_path / "data")
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(",".join(line.split(",")[:columns]) for line in lines) + "\n")
    replace_two(root)
    assert listing_problems(survey(root, "auto"), root) == []
    assert FramePairDataset(data_config(root), img_size=16, seed=0)[(0, 1)]["broken"] == 0
