"""Result-record parsing: anything that is not a complete record is skipped with a warning that
names the file, never an exception that stops the aggregator."""

from __future__ import annotations

import pytest

from eval.aggregate import aggregate
from eval.records import find_record_files, parse_record, read_records


@pytest.mark.parametrize("text", ["5", "null", '[{}]', '"record"'])
def test_valid_json_that_is_not_an_object_is_skipped_with_a_warning_naming_it(tmp_path, text):
    path = tmp_path / "run-r1" / "evals" / "step_00000010" / "davis-abc" / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_record(path)
    records, warnings = read_records(find_record_files(tmp_path))
    assert records == [] and len(warnings) == 1 and str(path) in warnings[0]
    assert aggregate(tmp_path, tmp_path / "out").warnings == warnings
