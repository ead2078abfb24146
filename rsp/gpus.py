"""Known GPU models: what they can do (bf16, memory) and how fast they are at best (dense peaks).

One table, read by the submit-time checks (`cluster.gpu_type`: is bf16 supported, can the batch
fit) and by the benchmarks (MFU = executed FLOP/s / the dense bf16 peak). Rates are the vendors'
data-sheet numbers for dense (not 2:4 sparse) tensor-core math; leads, not measurements.

A model is found from a name by its tokens: `lookup("NVIDIA H100 80GB HBM3")`,
`lookup("h100")` and `lookup("a100_80gb")` all work. The first entry whose tokens are all among
the name's tokens wins, so specific entries (H100 PCIe) come before general ones (H100, = SXM).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores; earlier GPUs emulate bf16 slowly, if at all


@dataclass(frozen=True)
class GPUModel:
    key: str  # what cluster.gpu_type accepts, e.g. "h100-pcie"
    capability: tuple[int, int]  # CUDA compute capability
    memory_gib: float  # device memory (GiB) torch can allocate at most
    bf16_tflops: float | None  # dense bf16 tensor-core peak (fp16 where bf16 is missing), TFLOP/s
    fp32_tflops: float  # plain (non-tensor-core) fp32 peak, TFLOP/s

    @property
    def tokens(self) -> frozenset[str]:
        return frozenset(self.key.split("-"))

    @property
    def native_bf16(self) -> bool:
        return self.capability >= BF16_MIN_CAPABILITY


GPU_MODELS: tuple[GPUModel, ...] = (
    GPUModel("b200", (10, 0), 179.0, 2250.0, 80.0),
    GPUModel("gh200", (9, 0), 94.5, 989.4, 66.9),
    GPUModel("h200-nvl", (9, 0), 139.8, 835.0, 60.0),
    GPUModel("h200", (9, 0), 139.8, 989.4, 66.9),  # SXM; torch names it "NVIDIA H200"
    GPUModel("h100-pcie", (9, 0), 79.1, 756.0, 51.2),
    GPUModel("h100-nvl", (9, 0), 93.1, 835.0, 60.0),
    GPUModel("h100", (9, 0), 79.1, 989.4, 66.9),  # SXM ("NVIDIA H100 80GB HBM3")
    GPUModel("a100-40gb", (8, 0), 39.4, 312.0, 19.5),
    # Plain "a100": the 80 GB part. The memory check only refuses batches that cannot fit, so an
    # ambiguous name takes the larger memory; name the 40 GB part a100-40gb.
    GPUModel("a100", (8, 0), 79.1, 312.0, 19.5),
    GPUModel("l40s", (8, 9), 44.4, 362.0, 91.6),
    GPUModel("l40", (8, 9), 44.4, 181.0, 90.5),
    GPUModel("l4", (8, 9), 22.0, 121.0, 30.3),
    GPUModel("a40", (8, 6), 44.4, 149.7, 37.4),
    GPUModel("a10g", (8, 6), 22.0, 70.0, 31.2),
    GPUModel("a10", (8, 6), 22.0, 125.0, 31.2),
    GPUModel("v100", (7, 0), 31.7, 125.0, 15.7),  # fp16 tensor cores only; 32 GB part (a 16 GB one exists)
    GPUModel("t4", (7, 5), 14.6, 65.0, 8.1),  # fp16 only
    GPUModel("p100", (6, 0), 15.9, None, 10.6),  # no tensor cores
)


def name_tokens(name: str) -> frozenset[str]:
    """'NVIDIA A100-SXM4-80GB' -> {nvidia, a100, sxm4, 80gb}; separators: space, -, _, /."""
    return frozenset(t for t in re.split(r"[\s\-_/]+", name.lower()) if t)


def lookup(name: str) -> GPUModel | None:
    """The GPU model `name` (a torch device name or a cluster.gpu_type) refers to, or None."""
    tokens = name_tokens(name)
    return next((model for model in GPU_MODELS if model.tokens <= tokens), None)


def known_keys() -> str:
    return ", ".join(model.key for model in GPU_MODELS)
