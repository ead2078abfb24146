"""The GPU path on one CUDA device (`pytest -m gpu`; skipped where torch sees no GPU):
bf16 and fp16 training with exact resume, a compiled step against eager within stated
tolerances, compiled exact resume, no host sync inside a training step, CUDA evaluation against
CPU evaluation, and a checkpoint written on the GPU read on the CPU (evaluation and training).

Run on a lent GPU with `python bench/gpu_check.py` (docs/training.md#checking-a-gpu)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from PIL import Image

from eval.config import EvalConfig
from eval.davis import write_davis
from eval.run import evaluate
from rsp.acceleration import BatchTooLargeError, device_settings
from rsp.config import RuntimeConfig
from rsp.distributed import DistEnv
from rsp.encoder import ViTEncoder
from rsp.latent import categorical_sample
from rsp.lifecycle import StopRequest
from rsp.model import create_model
from rsp.train import Trainer, TrainHooks, train
from testkit.training import assert_same_training_state, final_state, loss_trace, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = {"device": "cuda", "deterministic": True}  # deterministic kernels: bitwise resume on the GPU needs them
SCHEDULE = {"total_steps": 6, "warmup_steps": 1}

# Compiled vs eager, same weights, same inputs, same random numbers (Inductor told to use eager's
# RNG): relative differences of the loss and of the gradient (L2 over all parameters).
COMPILE_TOLERANCE = {"fp32": {"loss": 1e-5, "grad": 1e-3}, "bf16": {"loss": 1e-2, "grad": 5e-2}}
# CUDA vs CPU evaluation: features differ in the last bits (other kernels and summation orders; the
# patch embedding's convolution may use TF32 on the GPU, as torch allows by default), which can flip
# near-tied top-k choices: at least this share of label pixels agree, and J&F within this much.
EVAL_PIXEL_AGREEMENT = 0.99
EVAL_JF_TOLERANCE = 0.01


def resumed_equals_uninterrupted(videos, tmp_path, **runtime) -> None:
    full, chopped = tmp_path / "full", tmp_path / "chopped"
    rt = {**CUDA, **runtime}
    assert train(tiny_config(videos, schedule=SCHEDULE, runtime=rt), DistEnv(), full).status == "finished"
    stopped = train(tiny_config(videos, schedule=SCHEDULE, runtime={**rt, "stop_after_steps": 3}), DistEnv(), chopped)
    assert (stopped.status, stopped.step) == ("stopped", 3)
    assert train(tiny_config(videos, schedule=SCHEDULE, runtime=rt), DistEnv(), chopped).status == "finished"
    assert_same_training_state(full, chopped)
    trace = loss_trace(full)
    assert len(trace) == SCHEDULE["total_steps"] and all(np.isfinite(r["loss"]) for r in trace)


def test_bf16_training_is_finite_and_resumes_bitwise(train_videos, tmp_path):
    resumed_equals_uninterrupted(train_videos, tmp_path, precision="bf16")


def test_fp16_training_with_loss_scaling_is_finite_and_resumes_bitwise(train_videos, tmp_path):
    resumed_equals_uninterrupted(train_videos, tmp_path, precision="fp16")
    scaler = final_state(tmp_path / "full")["scaler"]
    assert scaler and 0 < scaler["scale"] < float("inf")


def test_compiled_training_resumes_bitwise(train_videos, tmp_path):
    torch._dynamo.reset()  # fresh compile caches: earlier tests' graphs count towards dynamo's recompile limit
    resumed_equals_uninterrupted(train_videos, tmp_path, precision="bf16", compile=True)


def loss_and_grad(model, src, tgt, precision: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(src, tgt).loss
    loss.backward()
    grad = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return loss.detach().float(), grad


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_step_matches_eager(precision):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_model("rsp_vit_tiny_patch8", img_size=64).cuda()
    src, tgt = torch.randn(8, 3, 64, 64, device="cuda"), torch.randn(8, 3, 64, 64, device="cuda")
    runtime = RuntimeConfig(tf32=False, deterministic=True)
    with device_settings(runtime, torch.device("cuda")), inductor_config.patch(fallback_random=True):
        eager_loss, eager_grad = loss_and_grad(model, src, tgt, precision, seed=1)
        compiled = torch.compile(model)
        loss_and_grad(compiled, src, tgt, precision, seed=1)  # compiles
        loss, grad = loss_and_grad(compiled, src, tgt, precision, seed=1)
    tol = COMPILE_TOLERANCE[precision]
    assert abs(loss - eager_loss) / abs(eager_loss) < tol["loss"]
    assert (grad - eager_grad).norm() / eager_grad.norm() < tol["grad"]


def test_a_training_step_never_waits_for_the_gpu(train_videos, tmp_path):
    """With the deferred host sync and the fused AdamW, a step (logging or not, bf16 or fp16)
    makes no synchronizing CUDA call: torch's sync debug mode turns any into an error."""
    for precision in ("bf16", "fp16"):
        cfg = tiny_config(train_videos, schedule={"total_steps": 20, "warmup_steps": 1}, runtime={**CUDA, "precision": precision})
        device = torch.device("cuda")
        with device_settings(cfg.runtime, device):
            trainer = Trainer(cfg, DistEnv(), tmp_path / precision, device, StopRequest(), TrainHooks())
            assert trainer.host_sync == "deferred" and trainer.optimizer.defaults["fused"]
            batches = trainer._batches(0)
            for _ in range(2):  # optimizer state and the scaler's tensors are created lazily
                trainer._train_step(batches, logging_step=True)
                trainer.step += 1
            torch.cuda.set_sync_debug_mode("error")
            try:
                for step in range(4):
                    trainer._train_step(batches, logging_step=step % 2 == 0)
                    trainer.step += 1
            finally:
                torch.cuda.set_sync_debug_mode("default")
            trainer.readback.drain()


def test_sampling_matches_torch_multinomial_on_cuda():
    """latent.categorical_sample reproduces torch.multinomial's draws (bit for bit on the CPU,
    tests/test_model.py); on CUDA it takes the same exponential race from the same generator."""
    probs = torch.randn(4096, 32, device="cuda").softmax(-1)
    a = torch.multinomial(probs, 1, generator=torch.Generator("cuda").manual_seed(3))[:, 0]
    b = categorical_sample(probs, torch.Generator("cuda").manual_seed(3))
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def davis_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis_gpu")
    torch.manual_seed(0)
    vit = ViTEncoder(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=1)
    for p in vit.parameters():
        torch.nn.init.normal_(p, std=0.2)
    torch.save(vit.encoder_state_dict(), root / "vit.pth")
    return root / "vit.pth", write_davis(root / "davis", n_sequences=3, n_frames=8, height=96, width=160)


def test_cuda_evaluation_matches_cpu_evaluation(davis_set, tmp_path):
    checkpoint, davis = davis_set
    base = EvalConfig(checkpoint=str(checkpoint), task="davis", data_root=str(davis), frame_size=96, workers=1)
    outcomes = {d: evaluate(dataclasses.replace(base, device=d, output_dir=str(tmp_path / d))) for d in ("cpu", "cuda")}
    pngs = sorted(p.relative_to(tmp_path / "cpu") for p in (tmp_path / "cpu").rglob("*.png"))
    assert pngs and pngs == sorted(p.relative_to(tmp_path / "cuda") for p in (tmp_path / "cuda").rglob("*.png"))
    same = total = 0
    for rel in pngs:
        a, b = (np.array(Image.open(tmp_path / d / rel)) for d in ("cpu", "cuda"))
        same, total = same + int((a == b).sum()), total + a.size
    assert same / total >= EVAL_PIXEL_AGREEMENT, f"{same / total:.5f} of pixels agree"
    jf = {d: o.metrics["J&F-Mean"] for d, o in outcomes.items()}
    assert abs(jf["cpu"] - jf["cuda"]) <= EVAL_JF_TOLERANCE, jf
    assert json.loads((tmp_path / "cuda" / "metrics.json").read_text())["device"].startswith("cuda")


def test_checkpoint_written_on_the_gpu_is_read_on_the_cpu(train_videos, davis_set, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(train_videos, schedule={"total_steps": 4, "warmup_steps": 1}, runtime={**CUDA, "stop_after_steps": 2})
    train(cfg, DistEnv(), run)
    checkpoint = sorted((run / "checkpoints").glob("step_*.pt"))[-1]
    # evaluation on the CPU reads it (sha256-verified, weights_only)
    _, davis = davis_set
    outcome = evaluate(
        EvalConfig(checkpoint=str(checkpoint), task="davis", data_root=str(davis), frame_size=64, device="cpu", workers=1)
    )
    assert 0 <= outcome.metrics["J&F-Mean"] <= 1
    # and training continues from it on the CPU (fused AdamW state into the CPU's kernel)
    cpu = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, device="cpu", stop_after_steps=None))
    result = train(cpu, DistEnv(), run)
    assert (result.status, result.resumed_from, result.step) == ("finished", 2, 4)
    state = final_state(run)
    assert all(not g.get("fused") for g in state["optimizer"]["param_groups"])
    assert all(t.device.type == "cpu" for t in state["model"].values())


def test_a_batch_that_does_not_fit_fails_its_step_naming_the_fix(train_videos, tmp_path):
    """16 videos x 256 pairs of S/16 at 224 px: terabytes of activations on any GPU."""
    cfg = tiny_config(
        train_videos,
        model={"name": "rsp_vit_small_patch16", "img_size": 224},
        data={"batch_size": 16, "repeated_sampling": 256},
        schedule={"total_steps": 2, "warmup_steps": 1},
        runtime=CUDA,
    )
    with pytest.raises(BatchTooLargeError, match=r"data.batch_size=16 \(4096 pairs per micro-step\) does not fit on .*"):
        train(cfg, DistEnv(), tmp_path / "run")
    torch.cuda.empty_cache()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt"))
