"""Run one training job as several processes: rank discipline, the `--nproc` launcher, engine presets.

chattune adds no parallelism of its own. Processes are started by torch's launcher
(`torchrun`, `chattune train --nproc N`, `accelerate launch`) and the Trainer synchronises them
through accelerate (DDP, FSDP or DeepSpeed). This module keeps the run dir single-writer:
rank 0 creates and writes it, every other rank learns its path from rank 0, messages print once,
and token counts are summed over ranks. Light to import: torch loads only when it is needed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from chattune.config import ConfigError, RunConfig, TrainConfig

PRESETS = "configs/distributed/"  # where the FSDP and DeepSpeed presets live (docs/distributed.md)


def world_size() -> int:
    """Processes in the job, as torch's launcher (torchrun, accelerate, deepspeed, srun+torchrun) tells them."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the one process that writes the run dir and prints (global rank 0)."""
    return rank() == 0


def ddp_backend(device: str) -> str | None:
    """gloo between CPU processes; None lets accelerate choose (nccl between GPUs)."""
    return "gloo" if device == "cpu" and world_size() > 1 else None


def join(device: str) -> None:
    """Set this process up for training on `device`; with several processes, join their group.

    The group is accelerate's PartialState, which the Trainer reuses. On GPUs it also makes
    cuda:LOCAL_RANK the current device, so each process loads the model onto its own GPU.
    """
    if device == "cpu":  # deepspeed (imported by accelerate when installed) would warn it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if world_size() <= 1:
        return
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    if not is_main():
        hf_logging.disable_progress_bar()  # "Loading weights" bars once, not once per process
    PartialState(cpu=device == "cpu", backend=ddp_backend(device))


def barrier() -> None:
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def shared_run_dir(prepare, cfg: RunConfig) -> Path:
    """Rank 0 runs `prepare(cfg)` (creates the run dir, resolves its timestamped name); every
    rank receives the same path, or rank 0's error, so all processes stop together."""
    if world_size() <= 1:
        return prepare(cfg)
    import torch.distributed as dist

    message: list = [None]
    if is_main():
        try:
            message = [str(prepare(cfg))]
        except Exception as err:  # sent to the other ranks, then raised everywhere
            message = [err]
    dist.broadcast_object_list(message, src=0)
    if isinstance(message[0], BaseException):
        raise message[0]
    return Path(message[0])


def rank_console(console):
    """The given console on rank 0; a silent one on the other ranks, so each message prints once."""
    from rich.console import Console

    if is_main():
        return console or Console(stderr=True)
    return Console(stderr=True, quiet=True)


def sum_over_ranks(values: list[int]) -> list[int]:
    """Element-wise sum of `values` over all processes (every rank must call it at the same point)."""
    if world_size() <= 1:
        return list(values)
    import torch
    from accelerate import PartialState
    from accelerate.utils import reduce

    tensor = torch.tensor(values, dtype=torch.int64, device=PartialState().device)
    return [int(v) for v in reduce(tensor, reduction="sum").tolist()]


def token_average_scale(trainer, num_items_in_batch) -> int:
    """Factor for a loss computed outside the model and divided by `num_items_in_batch`.

    With `average_tokens_across_devices` that count covers every rank's tokens, and DDP then
    averages the gradients over ranks. transformers' own compute_loss multiplies by the ranks,
    and a custom loss must do the same, or its loss and gradients shrink by the number of processes.
    """
    if num_items_in_batch is None or not trainer.args.average_tokens_across_devices:
        return 1
    if trainer.args.n_gpu > 1:
        return trainer.args.n_gpu
    return trainer.accelerator.num_processes // trainer.get_tp_size()


def full_state_dict(trainer):
    """FSDP and ZeRO-3 spread the weights over ranks: gather them for rank 0's save the way
    transformers' Trainer.save_model does (every rank must call it). None when each rank holds
    whole weights (one process, DDP, ZeRO-2): rank 0 then saves its own model."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model)
    engine = trainer.deepspeed if getattr(trainer, "is_deepspeed_enabled", False) else None
    if engine is not None and engine.zero_optimization_partition_weights():
        # ZeRO-3 + PEFT: gather only the trainable (adapter) weights, in 16 bit
        return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    return None


def state_digest(state: dict) -> str:
    """sha256 over a state dict's names and raw tensor bytes (any dtype), in name order."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rank_adapter_digests(model, train_cfg: TrainConfig) -> list[str]:
    """Every rank's digest of its own trained adapter, gathered on all ranks (data parallel keeps
    them identical; a difference means the processes diverged). Empty for one process or when
    FSDP / ZeRO-3 hold only a slice of the weights per rank."""
    if world_size() <= 1 or shards_weights(train_cfg):
        return []
    import torch.distributed as dist
    from peft import get_peft_model_state_dict

    digests: list = [None] * world_size()
    dist.all_gather_object(digests, state_digest(get_peft_model_state_dict(model)))
    return digests


# ---- FSDP / DeepSpeed presets: train.fsdp / train.deepspeed point at a file -------------------


def read_preset(path: str, key: str) -> dict:
    """A preset file as a dict: JSON (.json) or YAML; errors name the key, the file and the line."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: {path}: file not found (presets: {PRESETS})")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{key}: {path}:{err.lineno}: not valid JSON ({err.msg})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{key}: {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def engine_args(train_cfg: TrainConfig) -> dict:
    """TrainingArguments keys for train.fsdp / train.deepspeed (transformers' fsdp, fsdp_config, deepspeed)."""
    if train_cfg.fsdp:
        return {"fsdp": True, "fsdp_config": read_preset(train_cfg.fsdp, "train.fsdp")}
    if train_cfg.deepspeed:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError("train.deepspeed needs the deepspeed package (pip install deepspeed); or use train.fsdp")
        return {"deepspeed": read_preset(train_cfg.deepspeed, "train.deepspeed")}
    return {}


def shards_weights(train_cfg: TrainConfig) -> bool:
    """FSDP and ZeRO-3 keep only a slice of each weight per rank; DDP and ZeRO-2 keep whole weights."""
    if train_cfg.fsdp:
        return True
    if train_cfg.deepspeed:
        stage = read_preset(train_cfg.deepspeed, "train.deepspeed").get("zero_optimization", {}).get("stage")
        return stage == 3
    return False


def check_engine(cfg: RunConfig, wants_eval_loop: bool, device: str, launching: bool = False) -> None:
    """Before any model loads: preset files readable, DeepSpeed installed, no unsupported mix.

    accelerate runs FSDP and DeepSpeed only on GPUs (other accelerators too) and only in processes
    started by a launcher; elsewhere the Trainer would quietly fall back to DDP or one process.
    """
    if not engine_args(cfg.train):
        return
    key = "train.fsdp" if cfg.train.fsdp else "train.deepspeed"
    if device == "cpu":
        raise ConfigError(f"{key} needs GPUs (accelerate runs FSDP and DeepSpeed on accelerators only); "
                          "on CPU drop it: --nproc N alone trains data-parallel (DDP over gloo)")
    if not (launching or "LOCAL_RANK" in os.environ):
        raise ConfigError(f"{key} shards over processes started by a launcher: add --nproc N, or run "
                          "torchrun --nproc-per-node N -m chattune train ... (docs/distributed.md)")
    if wants_eval_loop and shards_weights(cfg.train):
        raise ConfigError(
            "train.eval_every / train.patience / train.metric keep and restore the best adapter, which needs "
            "whole weights on every rank; with FSDP or ZeRO-3 leave them unset (with held-out data the Trainer "
            "still reports the eval loss at each epoch's end)"
        )


# ---- the `--nproc N` launcher -------------------------------------------------------------------


def without_nproc(argv: list[str]) -> list[str]:
    """argv with `--nproc N` / `--nproc=N` removed."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            out.append(item)
    return out


def launch_command(nproc: int, argv: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m chattune ARGV` (torchrun)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "chattune", *without_nproc(argv)]


def launch(nproc: int, argv: list[str]):
    """Replace this process with torchrun running `chattune ARGV` as `nproc` processes on this machine.

    exec, not a child: signals (Ctrl-C, Slurm's SIGTERM) reach torchrun, which forwards them to
    its workers, and torchrun's exit code is chattune's.
    """
    if "LOCAL_RANK" in os.environ or world_size() > 1:
        raise ConfigError("--nproc: this process was already started by a launcher (torchrun, accelerate); drop --nproc")
    command = launch_command(nproc, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
