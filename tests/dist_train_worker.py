"""Run by torchrun in the multi-process tests: train the config in argv[1] (JSON) into argv[2]."""

import json
import logging
import sys
from pathlib import Path

from core.schema import from_dict
from rsp.config import TrainConfig
from rsp.distributed import DistEnv
from rsp.train import train

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    cfg = from_dict(TrainConfig, json.loads(Path(sys.argv[1]).read_text()))
    result = train(cfg, DistEnv.from_environ(), Path(sys.argv[2]))
    print("RESULT", json.dumps({"status": result.status, "step": result.step}), flush=True)
