"""The CUDA paths issue 15 named beyond tests/test_gpu.py: DDP over NCCL, the FSDP and DeepSpeed ZeRO-2/3
presets training 2 steps, and the export of a run trained on the GPU.

Marked `gpu`: skipped with the reason on a machine without CUDA (tests/conftest.py); DDP needs two GPUs
and says so. Each run is `python -m chattune train --nproc N` exactly as a user types it (torchrun
--standalone, tests/test_distributed.py's CPU form), on the tiny random Llama, in bf16.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chattune import rundir

pytestmark = pytest.mark.gpu
PRESETS = Path(__file__).resolve().parent.parent / "configs" / "distributed"


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _launched_run(model_dir, tmp_path, nproc: int, *extra) -> Path:
    """Train 2 steps with `--nproc nproc` on CUDA in bf16; the one run dir it made."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("LOCAL_RANK", None)
    command = [
        sys.executable, "-m", "chattune", "train", "--nproc", str(nproc),
        f"model.name={model_dir}", f"output_dir={tmp_path / 'runs'}", "name=gpu",
        "data.size=16", "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1", "train.lr=1e-2",
        "train.precision=bf16", "train.device=cuda", "lora.dropout=0.0", "train.forgetting=false", *extra,
    ]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (path,) = (tmp_path / "runs").iterdir()
    return path


def _assert_trained(path: Path, processes: int) -> dict:
    from safetensors.torch import load_file

    records = [r for r in rundir.RunDir(path).metrics() if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    summary = json.loads((path / rundir.SUMMARY).read_text())
    assert summary["processes"] == processes and summary["precision"] == "bf16"
    saved = load_file(path / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for name, t in saved.items() if "lora_B" in name), "it trained"
    return summary


def test_ddp_over_nccl_keeps_the_ranks_adapters_equal(tiny_model_dir, tmp_path):
    if _cuda_devices() < 2:
        pytest.skip(f"DDP over NCCL needs 2 GPUs; this machine has {_cuda_devices()}")
    summary = _assert_trained(_launched_run(tiny_model_dir, tmp_path, 2), processes=2)
    digests = summary["rank_adapter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]


@pytest.mark.parametrize("key, preset", [("train.fsdp", "fsdp.yaml"), ("train.deepspeed", "zero2.json"),
                                         ("train.deepspeed", "zero3.json")])
def test_engine_presets_train_two_steps_and_save_a_whole_adapter(tiny_model_dir, tmp_path, key, preset):
    if key == "train.deepspeed":
        pytest.importorskip("deepspeed")
    processes = min(2, _cuda_devices())
    path = _launched_run(tiny_model_dir, tmp_path, processes, f"{key}={PRESETS / preset}")
    _assert_trained(path, processes)
    from chattune.infer.chat import ChatModel

    chat = ChatModel.load(str(path), device="cuda")  # the saved adapter is whole: it loads on one GPU
    assert chat.reply([{"role": "user", "content": "Hi"}]) is not None


def test_a_run_trained_on_the_gpu_exports_behind_its_gate(varied_tiny_model_dir, tmp_path):
    from chattune.exporting.pipeline import export_run

    path = _launched_run(varied_tiny_model_dir, tmp_path, 1)
    report = export_run(path, tmp_path / "merged")[0]
    assert report.passed and report.greedy_agreement == 1.0
    assert (tmp_path / "merged" / "config.json").is_file()
