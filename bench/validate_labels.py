"""How long submit-time data validation takes on a Kinetics-sized labels file (target: < 10 s for
240,000 videos on a local disk).

    python bench/validate_labels.py [--videos 240000] [--classes 400] [--root DIR]

Generates a labels.csv of N videos in our format and the tree it lists (N empty files in C class
folders: existence is what is checked, not content), then times, cold (caches cleared, each
repeat):
- `survey`: reading the labels file, one directory listing per folder, duplicates, frame counts;
- `data_problems`: everything submit-time validation does with the data of a run config (the
  survey plus the batch and gap rules);
- a stand-in baseline, NOT the project's code: the same existence check with one stat per listed
  file (`os.path.isfile`), what a naive validator does; on NFS each stat is a round trip.
The page cache is warm after generation (the files were just written), as it is for a dataset
that was recently listed; the first listing of a cold NFS tree costs more.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report  # noqa: E402
from launch.config import RunConfig  # noqa: E402
from launch.validation.data import _survey, data_problems, survey  # noqa: E402
from rsp.video import LabelEntry, read_labels, write_labels  # noqa: E402


def generate(root: Path, videos: int, classes: int) -> Path:
    """labels.csv + `videos` empty .mp4 files under train/<class>/ (names as rsp.prepare writes them)."""
    entries = []
    for i in range(videos):
        cls = i % classes
        entries.append(LabelEntry(f"train/class_{cls:03d}/yt{i:011d}_000010_000020.mp4", cls, f"class {cls}", 250 + i % 50))
    for c in range(classes):
        (root / "train" / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    for e in entries:
        (root / e.path).touch()
    write_labels(root / "labels.csv", entries)
    return root / "labels.csv"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=240_000)
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--root", type=Path, default=None, help="where to generate (default: a temporary folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        root = Path(tmp) / "k400"
        gen_s, labels = timed(lambda: generate(root, args.videos, args.classes))
        cfg = RunConfig()
        cfg.data.root, cfg.data.batch_size, cfg.data.max_gap = str(root), 96, 48
        rows = []
        for repeat in range(args.repeats):
            _survey.cache_clear()
            survey_s, found = timed(lambda: survey(root, "auto"))
            _survey.cache_clear()
            problems_s, problems = timed(lambda: data_problems(cfg))
            cached_s, _ = timed(lambda: data_problems(cfg))  # a sweep's second run over the same dataset
            read_s, entries = timed(lambda: read_labels(labels))
            stat_s, missing = timed(lambda entries=entries: sum(not os.path.isfile(root / e.path) for e in entries))
            assert found.videos == args.videos and not found.missing and not problems and missing == 0, problems
            rows.append(
                {
                    "repeat": repeat,
                    "videos": args.videos,
                    "folders": args.classes,
                    "survey_s": survey_s,
                    "data_problems_s": problems_s,
                    "cached_per_run_s": cached_s,
                    "read_labels_s": read_s,
                    "stand_in_stat_per_file_s": stat_s,
                }
            )
    best = min(r["data_problems_s"] for r in rows)
    report(
        "validate_labels",
        rows,
        {
            "target_s": 10.0,
            "best_data_problems_s": best,
            "generation_s": gen_s,
            "load_average": os.getloadavg(),
            "note": "stand_in_stat_per_file_s is a naive stat-per-file check, not the project's code",
        },
    )


if __name__ == "__main__":
    main()
