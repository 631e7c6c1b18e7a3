"""Several processes, one run: `chattune train --nproc 2` on CPU (gloo), the launcher, FSDP/DeepSpeed presets."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from chattune import rundir
from chattune.config import ConfigError, load_config
from chattune.training import distributed

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "configs" / "distributed"


def _two_process_run(tiny_model_dir, tmp_path, *extra):
    """`python -m chattune train --nproc 2` exactly as a user types it; torchrun --standalone picks a free port."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    command = [
        sys.executable, "-m", "chattune", "train", "--nproc", "2",
        f"model.name={tiny_model_dir}", f"output_dir={tmp_path / 'runs'}", "name=ddp",
        "data.size=16", "train.epochs=1", "train.batch_size=2", "train.grad_accum=1", "train.lr=1e-2",
        "train.precision=fp32", "train.device=cpu", "lora.dropout=0.0", *extra,
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # > ~15 s on 2 cores: subprocesses or many requests
def test_two_processes_train_one_run_dir(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    proc = _two_process_run(tiny_model_dir, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs  # rank 0 named it (timestamp) and rank 1 used that name
    path = run_dirs[0]
    assert path.name.startswith("ddp-")
    assert (path / "adapter" / "adapter_model.safetensors").is_file()
    assert not [p for p in path.iterdir() if p.name.startswith((".adapter", "last_adapter"))]  # one adapter
    # rank 0 alone wrote metrics.jsonl: each of the 4 steps once (16 examples / (2 processes x batch 2))
    records = [r for r in rundir.RunDir(path).metrics() if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # the random tiny model starts near uniform: cross-entropy ~ ln(vocab). A loss divided by the
    # number of processes (custom loss without the Trainer's x ranks) would log about half of it.
    vocab = AutoConfig.from_pretrained(tiny_model_dir).vocab_size
    assert abs(records[0]["loss"] - math.log(vocab)) < 0.3, (records[0]["loss"], math.log(vocab))
    summary = json.loads((path / rundir.SUMMARY).read_text())
    stats = json.loads((path / rundir.DATA_STATS).read_text())["train"]
    assert summary["processes"] == 2 and summary["steps"] == 4
    # one epoch over both ranks' shards: token counts are sums over ranks, not one rank's half
    assert (summary["tokens"], summary["trained_tokens"]) == (stats["tokens"], stats["trained_tokens"])
    # each rank hashed its own in-memory adapter; DDP keeps them identical, equal to the saved one
    digests = summary["rank_adapter_sha256"]
    saved = load_file(path / "adapter" / "adapter_model.safetensors")
    assert len(digests) == 2 and digests[0] == digests[1] == distributed.state_digest(saved)
    assert any(t.abs().sum() > 0 for name, t in saved.items() if "lora_B" in name)  # it did train
    # messages print once, not once per process
    assert proc.stderr.count("run dir") == 1
    assert proc.stderr.count("train: 16 examples") == 1


@pytest.mark.slow  # > ~15 s on 2 cores: subprocesses or many requests
def test_token_budget_pieces_sync_like_whole_batches(tiny_model_dir, tmp_path):
    """train.micro_batch_tokens=1 under DDP: each rank runs its 2 examples as 2 pieces, only the last syncs."""
    from safetensors.torch import load_file

    from adapter_helpers import assert_same_sgd_training

    adapters = []
    for budget in (0, 1):
        (tmp_path / str(budget)).mkdir()
        proc = _two_process_run(tiny_model_dir, tmp_path / str(budget), f"train.micro_batch_tokens={budget}",
                                "train.optim=sgd", "train.lr=0.5")
        assert proc.returncode == 0, proc.stderr[-4000:]
        (path,) = (tmp_path / str(budget) / "runs").iterdir()
        digests = json.loads((path / rundir.SUMMARY).read_text())["rank_adapter_sha256"]
        assert len(digests) == 2 and digests[0] == digests[1], "the ranks ended with the same adapter"
        adapters.append(load_file(path / "adapter" / "adapter_model.safetensors"))
    assert_same_sgd_training(*adapters)


def test_nproc_reruns_the_command_under_torchrun(monkeypatch, tmp_path):
    from chattune import cli

    class Execed(Exception):
        """os.execv does not return; the stand-in stops here too."""

    calls = []

    def fake_execv(exe, argv):
        calls.append(argv)
        raise Execed

    monkeypatch.setattr(os, "execv", fake_execv)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  max_steps: 2\n")
    with pytest.raises(Execed):
        cli.main(["train", str(config), "train.lr=0.01", "--nproc=3"])
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
                      "-m", "chattune", "train", str(config), "train.lr=0.01"]]
    assert distributed.without_nproc(["train", "--nproc", "2", "a=1"]) == ["train", "a=1"]


def _refused(monkeypatch, capsys, argv):
    from chattune import cli

    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("must not launch"))
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def test_nproc_refusals(monkeypatch, capsys):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    err = _refused(monkeypatch, capsys, ["train", "--nproc", "2", f"train.fsdp={PRESETS / 'fsdp.yaml'}", "train.device=cpu"])
    assert "train.fsdp needs GPUs" in err
    assert "at least 1" in _refused(monkeypatch, capsys, ["train", "--nproc", "0"])
    monkeypatch.setenv("LOCAL_RANK", "0")  # already started by torchrun
    assert "already started by a launcher" in _refused(monkeypatch, capsys, ["train", "--nproc", "2"])


def test_python_dash_m_chattune():
    out = subprocess.run([sys.executable, "-m", "chattune", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip()


def test_ddp_backend_and_ranks(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.ddp_backend("cpu") is None and distributed.is_main()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.ddp_backend("cpu") == "gloo" and distributed.ddp_backend("cuda") is None
    assert not distributed.is_main()


# ---- presets: configs/distributed/ -> TrainingArguments ----------------------------------------


def _args_for(preset: Path, key: str, precision: str = "bf16"):
    from chattune.training.trainer import build_training_args

    cfg = load_config(None, [f"{key}={preset}", "train.batch_size=2", "train.grad_accum=4", "train.max_grad_norm=0.5",
                             "train.lr=3e-4"])
    # "cpu": this machine has no GPU, and TrainingArguments refuses bf16 on an absent one
    return cfg, build_training_args(cfg, Path("/nonexistent/run"), precision, "cpu", False, cfg.train.lr)


def test_fsdp_preset_builds_training_args_and_accelerate_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, args = _args_for(PRESETS / "fsdp.yaml", "train.fsdp")
    assert args.fsdp and args.deepspeed is None
    plugin_args = args.fsdp_plugin_args
    assert plugin_args["fsdp_version"] == 2 and plugin_args["reshard_after_forward"] is True
    assert plugin_args["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    plugin = FullyShardedDataParallelPlugin(**plugin_args)  # what the Trainer builds from them
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)  # the adapter is gathered whole for rank 0's save


@pytest.fixture
def deepspeed_config_cleanup(monkeypatch):
    """TrainingArguments(deepspeed=ZeRO-3) registers a process-wide config that makes every later
    from_pretrained use zero.Init; remove it after the test."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # no GPU here; deepspeed would warn it found none
    yield
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _autos(node, where=""):
    if isinstance(node, dict):
        return [a for k, v in node.items() for a in _autos(v, f"{where}.{k}")]
    return [where] if node == "auto" else []


@pytest.mark.parametrize("preset, stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_deepspeed_presets_fill_every_auto_and_pass_deepspeed_validation(
    preset, stage, tiny_model_dir, deepspeed_config_cleanup
):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoConfig

    _, args = _args_for(PRESETS / preset, "train.deepspeed")
    hf = args.hf_deepspeed_config
    assert hf.is_zero3() == (stage == 3)
    # what the Trainer does once it has the model and the step count: fill the model-sized "auto"s
    hf.trainer_config_finalize(args, SimpleNamespace(config=AutoConfig.from_pretrained(tiny_model_dir)), 10)
    config = hf.config
    assert _autos(config) == []
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["bf16"]["enabled"] is True and config["fp16"]["enabled"] is False
    assert config["zero_optimization"]["reduce_bucket_size"] == 64 * 64  # hidden_size ** 2
    # DeepSpeed's own parser (pydantic: unknown zero_optimization keys are errors)
    parsed = DeepSpeedConfig(config)
    assert parsed.zero_optimization_stage == stage and parsed.gradient_clipping == 0.5
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save  # adapter saved whole from rank 0


def test_engine_checks(monkeypatch, tmp_path):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    zero3 = load_config(None, [f"train.deepspeed={PRESETS / 'zero3.json'}"])
    zero2 = load_config(None, [f"train.deepspeed={PRESETS / 'zero2.json'}"])
    with pytest.raises(ConfigError, match="needs GPUs"):
        distributed.check_engine(zero2, False, "cpu", launching=True)
    with pytest.raises(ConfigError, match="launcher"):
        distributed.check_engine(zero2, False, "cuda")
    distributed.check_engine(zero2, True, "cuda", launching=True)  # ZeRO-2 keeps weights whole: eval loop fine
    with pytest.raises(ConfigError, match="ZeRO-3"):
        distributed.check_engine(zero3, True, "cuda", launching=True)
    distributed.check_engine(load_config(None, []), True, "cpu")  # plain DDP / one process: nothing to check
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, [f"train.deepspeed={PRESETS / 'zero2.json'}", f"train.fsdp={PRESETS / 'fsdp.yaml'}"])


def test_preset_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        distributed.read_preset(str(tmp_path / "nope.json"), "train.deepspeed")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "zero_optimization": {\n    "stage": 2,\n  }\n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:4: not valid JSON"):
        distributed.read_preset(str(bad), "train.deepspeed")
    listed = tmp_path / "list.yaml"
    listed.write_text("- version: 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        distributed.read_preset(str(listed), "train.fsdp")
