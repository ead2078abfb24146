"""Shared by the benchmark scripts: where results go, the machine they ran on, and printing a
table plus its JSON.

Results go outside the checkout unless told otherwise: `$RSP_BENCH_RESULTS`, else
`$XDG_CACHE_HOME/rsp-bench` (`~/.cache/rsp-bench`); every script also takes `--out`."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(
    os.environ.get("RSP_BENCH_RESULTS") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rsp-bench"
)


def machine() -> dict:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def report(name: str, rows: list[dict], extra: dict | None = None, out: Path | None = None) -> Path:
    """Print rows as an aligned table and the extras, then `write` them."""
    if rows:
        keys = list(rows[0])
        cells = [[_fmt(r.get(k)) for k in keys] for r in rows]
        widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
        print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
        for c in cells:
            print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
    for k, v in (extra or {}).items():
        print(f"{k}: {_fmt(v)}")
    return write(name, rows, extra, out)


def write(name: str, rows: list[dict], extra: dict | None = None, out: Path | None = None) -> Path:
    """Write {machine, rows, **extra} to `out` (default RESULTS/<name>.json). Benchmarks that
    print their own table call it directly."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), "rows": rows, **(extra or {})}, indent=2, default=str))
    print(f"wrote {path}")
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
