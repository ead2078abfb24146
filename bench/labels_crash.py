"""A decoder that crashes in native code on one file of 1,000: the labels step still completes,
with the 999 others labelled (target) and the crashing one recorded unreadable by that decoder.

    python bench/labels_crash.py [--videos 1000] [--jobs 2] [--decoder torchcodec]

With `--decoders torchcodec` (the default) the crashing file has no other decoder and is
dropped: 999 labelled. With more decoders it stays, `unreadable` for the one that crashed.

Makes `--videos` small files (copies of 20 generated 32x48 px, 12-frame videos, in 4 class
folders) and runs `rsp.prepare`'s labels step twice on fresh copies, back to back:
- baseline: rsp.probe's check on every file;
- crash: the same check, except that `--decoder`'s decode of one file reads address 0 (a real
  SIGSEGV in the worker process, as torchcodec's did on a real third-party video).
Prints both times, the files labelled, and what was recorded for the crashing file.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_io import report  # noqa: E402
from rsp.decoders import DECODERS, UNREADABLE  # noqa: E402
from rsp.prepare import write_labels_file  # noqa: E402
from rsp.probe import VideoProbe, probe_video  # noqa: E402
from rsp.synthetic import generate_dataset  # noqa: E402
from rsp.video import read_labels  # noqa: E402

CRASH_MARK = "crash_"
CRASHING_DECODER = os.environ.get("BENCH_CRASHING_DECODER", "torchcodec")  # read again in each worker


def probe_crashing_on_one_file(path: Path, decoders: Sequence[str] = DECODERS) -> VideoProbe:
    if Path(path).name.startswith(CRASH_MARK) and CRASHING_DECODER in decoders:
        ctypes.string_at(0)  # SIGSEGV
    return probe_video(path, decoders)


def make_tree(root: Path, sources: list[Path], videos: int) -> Path:
    for i in range(videos):
        target = root / "train" / f"class_{i % 4}" / f"{CRASH_MARK if i == videos // 2 else ''}video_{i:05d}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[i % len(sources)], target)
    return root


def run(root: Path, jobs: int, decoders: list[str], probe) -> dict:
    start = time.perf_counter()
    step = write_labels_file(root, root / "train", jobs=jobs, decoders=decoders, probe_file=probe)
    seconds = time.perf_counter() - start
    crashed = [e for e in read_labels(root / "labels.csv") if e.path.rsplit("/", 1)[-1].startswith(CRASH_MARK)]
    return {
        "seconds": round(seconds, 1),
        "labelled": step.done - len(step.failed),
        "dropped": len(step.failed),
        "drop reasons": "; ".join(reason for _, reason in step.failed)[:100],
        "crashed_entry": crashed,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=1000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--decoder", default="torchcodec", choices=DECODERS, help="the one that crashes")
    p.add_argument("--decoders", nargs="+", default=["torchcodec"], choices=DECODERS, help="those the labels step checks")
    args = p.parse_args()
    os.environ["BENCH_CRASHING_DECODER"] = args.decoder
    global CRASHING_DECODER
    CRASHING_DECODER = args.decoder
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_dataset(tmp / "sources", 20, num_classes=1, height=32, width=48, num_frames=12, jobs=args.jobs)
        sources = sorted((tmp / "sources" / "train").rglob("*.mp4"))
        rows = []
        for name, probe in (("baseline", probe_video), ("crash", probe_crashing_on_one_file)):
            outcome = run(make_tree(tmp / name, sources, args.videos), args.jobs, args.decoders, probe)
            entry = outcome.pop("crashed_entry")
            seek = entry[0]._asdict() if entry else {}
            rows.append(
                {"run": name, **outcome, f"crashing file: seek_{args.decoder}": seek.get(f"seek_{args.decoder}", "dropped")}
            )
    extra = {
        "videos": args.videos,
        "jobs": args.jobs,
        "decoders": args.decoders,
        "load": os.getloadavg()[0],
        "crash_recorded": rows[1][f"crashing file: seek_{args.decoder}"] == UNREADABLE or "SIGSEGV" in rows[1]["drop reasons"],
    }
    print(json.dumps(rows))
    report("labels_crash", rows, extra)


if __name__ == "__main__":
    main()
