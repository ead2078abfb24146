"""The GPU options, everything of them a CPU can check: kernel choices, the deferred host sync,
what DDP relies on, GPU model lookup, one test per device rule (submit time and job start), and
torch.compile's exact resume (slow: Inductor builds C++ kernels)."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from core.schema import ConfigError
from launch.config import ClusterConfig, RunConfig
from launch.validation import validate
from launch.validation.devices import device_problems as submit_problems
from rsp.acceleration import DeviceSupportError, check_device_support, device_problems, memory_lower_bound
from rsp.checkpoint import CheckpointStore
from rsp.config import LATENTS, MAE_AUX_MODES, DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from rsp.distributed import DistEnv
from rsp.gpus import lookup
from rsp.model import create_model
from rsp.optim import build_optimizer, implementation, load_optimizer_state, param_groups
from rsp.train import NonFiniteLossError, train
from testkit.training import StopOnRead, assert_same_training_state, tiny_config

# --- what DDP's settings rely on ------------------------------------------------------------------------


@pytest.mark.parametrize("latent", LATENTS)
@pytest.mark.parametrize("mae_aux", MAE_AUX_MODES)
def test_every_trainable_parameter_gets_a_gradient_in_every_ablation(latent, mae_aux):
    """DDP runs with find_unused_parameters=False: a trainable parameter without a gradient would
    make it fail at the second step. kl_freebit far above the KL: the clamp passes zero, not None."""
    kl = {"kl_scale": 0.0} if latent == "none" else {"kl_scale": 0.01, "kl_freebit": 1e6}  # latent=none refuses KL fields
    model = create_model("rsp_vit_tiny_patch8", img_size=32, latent=latent, mae_aux=mae_aux, **kl)
    src, tgt = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    model(src, tgt).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"latent={latent} mae_aux={mae_aux}: no gradient for {missing}"
    assert not list(model.buffers())  # nothing for DDP to broadcast each forward


# --- the optimizer kernel ----------------------------------------------------------------------------------


def test_adamw_kernel_is_fused_on_cuda_and_the_per_parameter_loop_elsewhere():
    assert implementation(torch.device("cuda")) == {"fused": True, "foreach": False}
    assert implementation(torch.device("cpu")) == {"fused": False, "foreach": False}
    opt = build_optimizer(create_model("rsp_vit_tiny_patch8", img_size=32), TrainConfig(), 1e-3)
    assert opt.defaults["fused"] is False and opt.defaults["foreach"] is False


def test_state_of_a_fused_optimizer_continues_in_the_per_parameter_loop():
    """A checkpoint from a CUDA run (fused AdamW) resumed on the CPU: load_state_dict alone would
    adopt the file's fused flag; ours keeps the CPU's kernel and continues the same update."""
    torch.manual_seed(0)
    model = create_model("rsp_vit_tiny_patch8", img_size=32)
    fused = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, fused=True)  # the CPU has a fused AdamW too
    for _ in range(2):
        for p in model.parameters():
            p.grad = torch.randn_like(p) if p.requires_grad else None
        fused.step()
    saved = fused.state_dict()
    naive = build_optimizer(model, TrainConfig(), 1e-3)
    naive.load_state_dict(saved)
    assert naive.param_groups[0]["fused"] is True  # what load_optimizer_state prevents
    ours, reference = build_optimizer(model, TrainConfig(), 1e-3), build_optimizer(model, TrainConfig(), 1e-3)
    load_optimizer_state(ours, copy.deepcopy(saved))  # on the CPU, loading aliases the state's tensors
    reference.load_state_dict({**copy.deepcopy(saved), "param_groups": [{**g, "fused": False} for g in saved["param_groups"]]})
    assert all(g["fused"] is False for g in ours.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    ours.step()
    after_ours = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p, b in zip(model.parameters(), before, strict=True):
            p.copy_(b)
    reference.step()
    assert all(torch.equal(a, p) for a, p in zip(after_ours, model.parameters(), strict=True))


# --- the deferred host sync ----------------------------------------------------------------------------------


@pytest.mark.slow  # two runs compared step by step: ~12 s
def test_deferred_host_sync_trains_the_same_run(train_videos, tmp_path):
    """Reading each step's values one step late moves no number: an uninterrupted every_step run
    and a deferred run stopped and resumed end bitwise identical, loss trace included."""
    full, chopped = tmp_path / "every_step", tmp_path / "deferred"
    train(tiny_config(train_videos, runtime={"host_sync": "every_step"}), DistEnv(), full)
    deferred = {"host_sync": "deferred"}
    first = train(tiny_config(train_videos, runtime={**deferred, "stop_after_steps": 3}), DistEnv(), chopped)
    assert (first.status, first.step) == ("stopped", 3)
    assert train(tiny_config(train_videos, runtime=deferred), DistEnv(), chopped).status == "finished"
    assert_same_training_state(full, chopped)


@pytest.mark.slow  # two runs: ~10 s
def test_deferred_host_sync_stops_one_step_later_and_checkpoints_that_step(train_videos, tmp_path):
    cfg = tiny_config(train_videos, runtime={"host_sync": "deferred"})
    result = train(cfg, DistEnv(), tmp_path / "run", stop=StopOnRead(5))
    assert (result.status, result.step, result.stop_reason) == ("stopped", 6, "SIGUSR2")  # every_step: 5
    assert CheckpointStore(tmp_path / "run" / "checkpoints").manifests()[-1].step == 6


def test_deferred_host_sync_raises_on_a_non_finite_loss_before_any_later_checkpoint(train_videos, tmp_path):
    cfg = tiny_config(
        train_videos,
        optim={"lr": 1e30},
        schedule={"total_steps": 6, "warmup_steps": 0},
        checkpoint={"every_steps": 3, "keep_last": 10},
        runtime={"host_sync": "deferred"},
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step (\d+)") as info:
        train(cfg, DistEnv(), tmp_path / "run")
    # lr 1e30: step 1's update makes step 2's loss non-finite; it is read while step 3 runs, and
    # step 3 (a checkpoint step) is never saved.
    assert int(re.search(r"at step (\d+)", str(info.value)).group(1)) == 2
    # only the initialization (step 0, committed before the first step) is on disk
    assert [m.step for m in CheckpointStore(tmp_path / "run" / "checkpoints").manifests()] == [0]


# --- GPU models --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, key, bf16",
    [
        ("NVIDIA H100 80GB HBM3", "h100", True),
        ("NVIDIA H100 PCIe", "h100-pcie", True),
        ("NVIDIA H200", "h200", True),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb", True),
        ("a100", "a100", True),
        ("a100_80gb", "a100", True),
        ("NVIDIA A10G", "a10g", True),
        ("NVIDIA L40S", "l40s", True),
        ("Tesla V100-SXM2-32GB", "v100", False),
        ("Tesla T4", "t4", False),
    ],
)
def test_gpu_models_are_found_by_device_and_cluster_names(name, key, bf16):
    model = lookup(name)
    assert model is not None and model.key == key and model.native_bf16 is bf16


def test_unknown_gpu_names_are_not_guessed():
    assert lookup("NVIDIA GeForce RTX 4090") is None and lookup("h1000") is None


# --- device rules at job start (rsp.acceleration) ----------------------------------------------------------


def test_job_refuses_fp16_on_the_cpu():
    (problem,) = device_problems(RuntimeConfig(precision="fp16"), "cpu")
    assert "runtime.precision=fp16 needs a CUDA device" in problem and "use runtime.precision=fp32 or bf16" in problem


def test_job_refuses_bf16_on_a_gpu_without_bf16_tensor_cores():
    v100 = ("Tesla V100-SXM2-32GB", (7, 0))
    (problem,) = device_problems(RuntimeConfig(precision="auto"), "cuda", v100)
    assert "runtime.precision=auto means bf16" in problem and "compute capability 7.0" in problem
    assert "set runtime.precision=fp16" in problem
    assert device_problems(RuntimeConfig(precision="fp16"), "cuda", v100) == []
    assert device_problems(RuntimeConfig(precision="auto"), "cuda", ("NVIDIA A100-SXM4-80GB", (8, 0))) == []


def test_job_refuses_compile_without_a_compiler_before_writing_anything(train_videos, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(DeviceSupportError, match=r"runtime.compile=true cannot work on this cpu machine: .*no-such-g\+\+"):
        check_device_support(RuntimeConfig(compile=True), torch.device("cpu"))
    with pytest.raises(DeviceSupportError):
        train(tiny_config(train_videos, runtime={"compile": True}), DistEnv(), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert isinstance(DeviceSupportError(["x"]), ConfigError)  # the launcher reports it like any config error


def test_host_sync_must_be_a_known_mode():
    (problem,) = RuntimeConfig(host_sync="sometimes").problems()
    assert "runtime.host_sync ('sometimes') must be one of auto, every_step, deferred" in problem


# --- device rules at submit time (launch.validation.devices) ------------------------------------------------------------


def gpu_run(gpu_type: str | None = "h100", **sections) -> RunConfig:
    cfg = RunConfig(cluster=ClusterConfig(backend="slurm", gpus_per_node=4, gpu_type=gpu_type))
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


def test_submit_refuses_fp16_on_a_cpu_run():
    cfg = gpu_run(None, runtime={"precision": "fp16"}, cluster={"gpus_per_node": 0})
    assert any("runtime.precision=fp16 on a CPU run" in p for p in submit_problems(cfg))


def test_submit_refuses_gpu_decoding_on_a_cpu_run():
    cpu = gpu_run(None, data={"decoder": "torchcodec", "decode_device": "cuda"}, cluster={"gpus_per_node": 0})
    (problem,) = [p for p in submit_problems(cpu) if "data.decode_device" in p]
    assert "decodes videos on the GPU (NVDEC), but this is a CPU run" in problem and "set data.decode_device=cpu" in problem
    on_gpus = gpu_run(data={"decoder": "torchcodec", "decode_device": "cuda"})
    assert not [p for p in submit_problems(on_gpus) if "decode_device" in p]
    assert DataConfig(decode_device="cuda").problems() == [
        "data.decode_device=cuda decodes with torchcodec's GPU decoder, not pyav; set data.decoder=torchcodec or "
        "data.decode_device=cpu"
    ]


def test_submit_refuses_bf16_on_a_gpu_type_without_it():
    (problem,) = submit_problems(gpu_run("v100"))
    assert "runtime.precision=auto means bf16 autocast, which v100 GPUs (compute capability 7.0)" in problem
    assert submit_problems(gpu_run("v100", runtime={"precision": "fp16"})) == []


def test_submit_reads_the_gpu_model_from_a_plain_constraint():
    cfg = gpu_run(None, cluster={"constraint": "v100"})
    assert any("v100 GPUs" in p for p in submit_problems(cfg))
    assert submit_problems(gpu_run(None, cluster={"constraint": "v100|a100"})) == []  # not one model: no guess


def test_submit_refuses_a_batch_that_cannot_fit_the_gpu():
    cfg = gpu_run("t4", model={"name": "rsp_vit_small_patch16"}, data={"batch_size": 256}, runtime={"precision": "fp16"})
    (problem,) = submit_problems(cfg)
    assert "data.batch_size (256, 512 pairs per GPU and micro-step) cannot fit on a t4 (15 GiB)" in problem
    assert "raise optim.accum_iter" in problem
    assert submit_problems(gpu_run("h100", model={"name": "rsp_vit_small_patch16"}, data={"batch_size": 64})) == []


def test_submit_refuses_an_unknown_gpu_type():
    (problem,) = submit_problems(gpu_run("h1000"))
    assert "cluster.gpu_type ('h1000') is not a known GPU model; valid:" in problem and "h100" in problem


def test_submit_refuses_a_gpu_type_without_gpus():
    cfg = gpu_run("h100", cluster={"gpus_per_node": 0})
    assert any("cluster.gpu_type ('h100') is set but cluster.gpus_per_node=0" in p for p in submit_problems(cfg))


def test_submit_refuses_device_cuda_without_gpus():
    cfg = gpu_run(None, runtime={"device": "cuda"}, cluster={"gpus_per_node": 0})
    assert any("runtime.device=cuda but cluster.gpus_per_node=0" in p for p in submit_problems(cfg))


def test_submit_refuses_compile_on_a_local_run_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    cfg = gpu_run(None, runtime={"compile": True}, cluster={"backend": "local", "gpus_per_node": 0})
    assert any("runtime.compile=true cannot work on this machine" in p for p in submit_problems(cfg))


def test_submit_warns_about_compile_on_a_cpu_run(tmp_path, capsys):
    root = tmp_path / "videos"
    cfg = RunConfig(data=DataConfig(root=str(root), synthetic_videos=4, batch_size=4), output_root=str(tmp_path / "runs"))
    cfg.runtime.compile = True
    findings = validate([cfg])
    assert findings.problems == [] and any("runtime.compile=true on a CPU run" in w for w in findings.warnings)
    findings.show()  # what both front doors print
    assert "warning: runtime.compile=true on a CPU run" in capsys.readouterr().err


def test_memory_lower_bound_grows_with_the_batch_and_shrinks_with_16_bit():
    cfg = TrainConfig(model=ModelConfig(name="rsp_vit_small_patch16"), data=DataConfig(batch_size=8))
    small, large = memory_lower_bound(cfg, "bf16"), None
    cfg.data.batch_size = 16
    large = memory_lower_bound(cfg, "bf16")
    assert small < large < 2 * small  # model state does not grow with the batch
    assert memory_lower_bound(cfg, "bf16") < memory_lower_bound(cfg, "fp32")
    assert 2 * 2**30 < large < 20 * 2**30  # S/16, 32 pairs


# --- torch.compile -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_training_resumes_bitwise_on_the_cpu(train_videos, tmp_path):
    """Inductor on the CPU (C++ kernels; minutes to build the first time, cached after): a compiled
    run stopped and resumed equals the uninterrupted compiled run. (Compiled and eager runs differ:
    Inductor draws its own random numbers; tests/test_gpu.py compares them with eager's RNG.)
    Without the MAE branch: the graph keeps Inductor's random draws (the posterior's input noise,
    the latent sample) with 67 kernels to build instead of 110 (~1 CPU-s each)."""
    torch._dynamo.reset()
    full, chopped = tmp_path / "full", tmp_path / "chopped"

    def compiled(**runtime):
        schedule = {"total_steps": 4, "warmup_steps": 1}
        return tiny_config(train_videos, model={"mae_aux": "off"}, schedule=schedule, runtime={"compile": True, **runtime})

    assert train(compiled(), DistEnv(), full).status == "finished"
    train(compiled(stop_after_steps=2), DistEnv(), chopped)
    train(compiled(), DistEnv(), chopped)
    assert_same_training_state(full, chopped)
