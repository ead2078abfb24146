"""Result-record parsing: anything that is not a complete record is skipped with a warning that
names the file, never an exception that stops the aggregator."""

from __future__ import annotations

import dataclasses
import json

import pytest

from eval.records import find_record_files, parse_record, read_records
from launch.results import aggregate_runs


@pytest.mark.parametrize("text", ["5", "null", "[{}]", '"record"'])
def test_valid_json_that_is_not_an_object_is_skipped_with_a_warning_naming_it(tmp_path, text):
    path = tmp_path / "run-r1" / "evals" / "step_00000010" / "davis-abc" / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_record(path)
    records, warnings = read_records(find_record_files(tmp_path))
    assert records == [] and len(warnings) == 1 and str(path) in warnings[0]
    assert aggregate_runs(tmp_path, tmp_path / "out").warnings == warnings


@pytest.mark.parametrize(
    "field,value",
    [
        ("step", [10]),
        ("run_id", ["r1"]),
        ("task", {"t": 1}),
        ("created", "yesterday"),
        ("protocol_hash", None),
        ("metrics", [1.0]),
        ("step", True),
    ],
)
def test_a_field_of_the_wrong_type_is_skipped_with_a_warning_naming_it(tmp_path, field, value):
    good, bad = (tmp_path / f"run-{n}" / "evals" / "step_00000010" / "davis-abc" / "record.json" for n in ("a", "b"))
    data = {
        "run_id": "r1",
        "run_name": "run",
        "config_hash": "c",
        "step": 10,
        "task": "davis",
        "protocol_hash": "p",
        "protocol": {},
        "metrics": {"J&F-Mean": 0.5},
        "checkpoint_sha256": "s",
        "checkpoint_path": "/x.pt",
        "code_version": "v",
        "job_id": "1",
        "wall_time_s": 1.0,
        "created": 1.0,
        "format": "rsp-result/1",
    }
    for path, record in ((good, data), (bad, data | {field: value})):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=f"wrong value types: {field} "):
        parse_record(bad)
    records, warnings = read_records(find_record_files(tmp_path))
    assert [dataclasses.asdict(r)["run_id"] for r in records] == ["r1"] and len(warnings) == 1 and str(bad) in warnings[0]
