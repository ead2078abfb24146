"""Training metrics from rank 0: TensorBoard scalars, a JSONL log, log lines and a progress bar.

x-axis: optimizer steps completed. Scalar names for the loss parts are the reference's
(train_loss, loss_post, loss_prior, loss_kl, kl, loss_mae, lr) so curves compare directly; ours
add grad_norm, pairs_per_s, data_wait_share and broken_videos.

Resuming from a checkpoint at step S continues the same TensorBoard run: the writer is opened with
purge_step S+1, so events an interrupted attempt logged after S are discarded by TensorBoard's
reader, and the JSONL log is truncated to steps <= S. No step appears twice.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

from core.atomicio import atomic_write_text

log = logging.getLogger(__name__)

# Our names for the model's log keys -> the reference's TensorBoard tags.
REFERENCE_TAGS = {
    "loss": "train_loss",
    "loss_post": "loss_post",
    "loss_prior": "loss_prior",
    "kl_loss": "loss_kl",
    "kl_value": "kl",
    "mae_loss": "loss_mae",
}


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Keep the lines of a JSONL metrics log with step <= last_step (and drop a torn last line).
    Returns the number of lines dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        resume_step: int,
        total_steps: int,
        progress_bar: str = "auto",
        tb_dir: Path | None = None,
    ):
        self.enabled = enabled
        self.total_steps = total_steps
        self._bar = None
        self._writer = None
        self._jsonl = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported here: only rank 0 pays for it

        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = run_dir / "metrics.jsonl"
        dropped = truncate_jsonl(self.jsonl_path, resume_step)
        if dropped:
            log.info("dropped %d metric lines logged after step %d by an interrupted attempt", dropped, resume_step)
        self._jsonl = open(self.jsonl_path, "a", buffering=1)
        self._writer = SummaryWriter(log_dir=str(tb_dir or run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        if progress_bar == "on" or (progress_bar == "auto" and sys.stderr.isatty()):
            from tqdm import tqdm  # only a rank-0 process on a terminal draws a bar

            self._bar = tqdm(total=total_steps, initial=resume_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(REFERENCE_TAGS.get(name, name), value, step)
        record = {"step": step, "time": time.time(), **{k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        line = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {scalars.get('loss', float('nan')):.4f}", refresh=False)
        else:
            log.info("step %d/%d %s", step, self.total_steps, line)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._jsonl is not None:
            self._jsonl.close()
