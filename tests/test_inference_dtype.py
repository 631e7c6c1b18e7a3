"""Issue 15: chat / predict / eval / serve load in the precision the run trained in.

The choice table (model.load.inference_precision) per device and CPU kind, per recorded run precision
and per --dtype; weights read straight onto the device; the flag reaching the loader from each command;
and the fidelity of a bf16 load: a bf16 run's logits loaded in bf16 stay within bf16's rounding of the
fp32 load and of training's own forward (bf16 autocast, LoRA in the autocast dtype).
"""

from __future__ import annotations

import json
import shutil

import pytest

from chattune.config import load_config
from chattune.model import load

BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits
# Rounding stages of the 2-layer tiny model, each off by at most one unit roundoff (tests/test_precision_paths.py):
# embedding, 2 x (attention, MLP) outputs, the final norm and the LM head (7), plus one.
BF16_STAGES = 8
IDS = [[1, 520, 1110, 3457, 28, 253, 5248, 2]]


def _machine(monkeypatch, fast_bf16: bool = False, cuda_bf16: bool = False) -> None:
    """Pretend to be a CPU with or without AMX/AVX512-BF16 and a GPU with or without bf16."""
    import torch

    monkeypatch.setattr(load, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)


def _cfg(*overrides):
    return load_config(None, list(overrides))


@pytest.mark.parametrize(("device", "fast_bf16", "cuda_bf16", "expected"), [
    ("cpu", True, False, "fp32"),  # bf16 rounds away a short-trained adapter's change (load.inference_precision)
    ("cpu", False, True, "fp32"),
    ("cuda", False, True, "bf16"),
    ("cuda", True, False, "fp16"),
])
def test_a_plain_model_loads_as_pick_precision_says(monkeypatch, device, fast_bf16, cuda_bf16, expected):
    _machine(monkeypatch, fast_bf16, cuda_bf16)
    assert load.inference_precision(None, device) == expected
    assert load.inference_precision(None, device, "auto") == expected


@pytest.mark.parametrize(("recorded", "device", "fast_bf16", "cuda_bf16", "expected"), [
    ("bf16", "cpu", True, False, "fp32"),  # on a CPU always fp32 unless --dtype says otherwise
    ("bf16", "cpu", False, False, "fp32"),
    ("fp16", "cpu", True, False, "fp32"),
    ("fp16", "cpu", False, False, "fp32"),
    ("fp32", "cpu", True, False, "fp32"),
    ("bf16", "cuda", False, True, "bf16"),
    ("bf16", "cuda", True, False, "fp32"),  # a GPU without bf16: fp16's range is not bf16's
    ("fp16", "cuda", False, True, "fp16"),
    ("fp16", "cuda", False, False, "fp16"),
    ("fp32", "cuda", True, True, "fp32"),
    (None, "cpu", True, False, "fp32"),
    (None, "cuda", False, True, "bf16"),  # no summary.json: train.precision=auto, resolved here
    (None, "cpu", False, False, "fp32"),
    (None, "cuda", False, False, "fp16"),
])
def test_a_run_loads_in_the_precision_it_trained_in(monkeypatch, recorded, device, fast_bf16, cuda_bf16, expected):
    _machine(monkeypatch, fast_bf16, cuda_bf16)
    assert load.inference_precision(_cfg("train.precision=auto"), device, "auto", recorded=recorded) == expected


@pytest.mark.parametrize(("config_precision", "device", "expected"), [
    ("bf16", "cpu", "fp32"), ("bf16", "cuda", "bf16"), ("fp16", "cpu", "fp32"), ("fp16", "cuda", "fp16"),
    ("fp32", "cuda", "fp32")])
def test_without_a_summary_the_configs_precision_counts(monkeypatch, config_precision, device, expected):
    _machine(monkeypatch, fast_bf16=True, cuda_bf16=True)
    assert load.inference_precision(_cfg(f"train.precision={config_precision}"), device) == expected


def test_the_recorded_precision_wins_over_the_configs_auto(monkeypatch):
    """train.precision=auto that resolved to fp32 on an AVX2 machine stays fp32 on an AMX one."""
    _machine(monkeypatch, fast_bf16=True, cuda_bf16=True)
    assert load.inference_precision(_cfg("train.precision=auto"), "cpu", recorded="fp32") == "fp32"


@pytest.mark.parametrize(("cuda_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_bf16_base_weights_make_an_fp32_run_a_bf16_one(monkeypatch, cuda_bf16, expected):
    _machine(monkeypatch, fast_bf16=True, cuda_bf16=cuda_bf16)
    cfg = _cfg("train.precision=fp32", "train.base_dtype=bf16")
    assert load.inference_precision(cfg, "cuda", recorded="fp32") == expected


@pytest.mark.parametrize("override", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_dtype_overrides_every_choice(monkeypatch, override, device):
    _machine(monkeypatch, fast_bf16=False, cuda_bf16=False)
    assert load.inference_precision(None, device, override) == override
    assert load.inference_precision(_cfg("train.precision=bf16"), device, override, recorded="bf16") == override


def test_torch_dtypes_and_a_bad_choice():
    import torch

    assert [load.torch_dtype(p) for p in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert load.inference_dtype(None, "cpu", "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        load.inference_precision(None, "cpu", "int8")


def test_the_cli_offers_the_loaders_choices():
    from chattune.cli import build_parser

    for argv in (["chat", "x"], ["predict", "x", "--data", "d", "--out", "o"], ["eval", "x", "--data", "d"],
                 ["serve", "x"]):
        assert build_parser().parse_args(argv).dtype == "auto"
        assert build_parser().parse_args([*argv, "--dtype", "bf16"]).dtype == "bf16"
        with pytest.raises(SystemExit):
            build_parser().parse_args([*argv, "--dtype", "int8"])
    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["chat"]._actions}
    assert tuple(actions["dtype"].choices) == load.INFERENCE_DTYPES


def test_weights_load_straight_onto_the_device_without_a_later_move(monkeypatch, tiny_model_dir):
    """device_map (and low_cpu_mem_usage) go to from_pretrained; no .to(device) after a full CPU load."""
    import torch
    from transformers import AutoModelForCausalLM

    from chattune.config import ModelConfig

    real = AutoModelForCausalLM.from_pretrained.__func__
    seen, moves = {}, []

    def spying_from_pretrained(cls, *args, **kwargs):
        seen.update(kwargs)
        model = real(cls, *args, **kwargs)
        model.to = lambda *a, **k: moves.append((a, k))  # the instance's .to shadows Module.to
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spying_from_pretrained))
    model = load.load_base_model(ModelConfig(name=str(tiny_model_dir)), dtype=torch.bfloat16, device="cpu")
    assert seen["device_map"] == "cpu" and seen["low_cpu_mem_usage"] is True and seen["dtype"] is torch.bfloat16
    assert moves == []
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cpu", torch.bfloat16)}


def test_zero3_gets_no_device_map(monkeypatch):
    """DeepSpeed ZeRO-3 refuses a device_map (transformers' check_and_set_device_map); it partitions itself."""
    import transformers.integrations

    assert load.weight_placement("cuda") == {"device_map": "cuda", "low_cpu_mem_usage": True}
    monkeypatch.setattr(transformers.integrations, "is_deepspeed_zero3_enabled", lambda: True)
    assert load.weight_placement("cuda") == {}


@pytest.fixture(scope="module")
def bf16_run(varied_tiny_model_dir, tmp_path_factory):
    """A 6-step run trained in bf16 on the CPU (bf16 base weights, bf16 autocast, LoRA in bf16)."""
    from chattune.training.trainer import train

    run_dir = tmp_path_factory.mktemp("bf16") / "bf16-run"
    outcome = train(load_config(None, [
        f"model.name={varied_tiny_model_dir}", f"run_dir={run_dir}", f"name={run_dir.name}", "data.size=16",
        "train.max_steps=6", "train.batch_size=4", "train.grad_accum=1", "train.lr=5e-2", "lora.dropout=0.0",
        "train.precision=bf16", "train.device=cpu", "train.forgetting=false",
    ]))
    assert outcome.summary["precision"] == "bf16"
    return run_dir


def _logits(model):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits.float()


def _training_forward_logits(run_dir):
    """The run's forward as training ran it: bf16 base, bf16 autocast, LoRA inputs left in the autocast dtype."""
    import torch

    from chattune import rundir
    from chattune.training.speed import lora_in_autocast_dtype

    model = rundir.load_for_inference(run_dir, dtype="bf16").model
    assert lora_in_autocast_dtype(model, "bf16") > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return _logits(model)


def test_a_bf16_load_keeps_the_adapters_outputs_within_bf16_rounding(bf16_run):
    """bf16-loaded vs fp32-loaded vs training's forward: within BF16_STAGES unit roundoffs of the logit scale.
    The adapter moves the logits by more than that, so a bf16 load that dropped it would fail here."""
    import torch

    from chattune.infer.chat import ChatModel

    bf16_model = ChatModel.load(str(bf16_run), dtype="bf16").model
    base_weights = bf16_model.get_base_model().get_input_embeddings().weight
    lora_weights = [p for n, p in bf16_model.named_parameters() if "lora_" in n]
    assert base_weights.dtype == torch.bfloat16 and {p.dtype for p in lora_weights} == {torch.float32}
    bf16 = _logits(bf16_model)
    fp32_model = ChatModel.load(str(bf16_run), dtype="fp32").model
    fp32 = _logits(fp32_model)
    with fp32_model.disable_adapter():
        without_adapter = _logits(fp32_model)
    tolerance = BF16_STAGES * BF16_UNIT_ROUNDOFF * float(fp32.abs().max())
    assert float((bf16 - fp32).abs().max()) <= tolerance
    assert float((bf16 - _training_forward_logits(bf16_run)).abs().max()) <= tolerance
    assert float((fp32 - without_adapter).abs().max()) > tolerance, "the adapter changed the logits"


def test_chat_loads_a_bf16_run_in_fp32_on_a_cpu_and_in_bf16_when_asked(monkeypatch, bf16_run):
    import torch

    from chattune.infer.chat import ChatModel

    for fast in (True, False):
        _machine(monkeypatch, fast_bf16=fast)
        model = ChatModel.load(str(bf16_run)).model
        assert model.get_base_model().get_input_embeddings().weight.dtype == torch.float32
    model = ChatModel.load(str(bf16_run), dtype="bf16").model
    assert model.get_base_model().get_input_embeddings().weight.dtype == torch.bfloat16


class Reached(Exception):
    """The loader was called: what with."""


@pytest.fixture
def loader_spy(monkeypatch):
    """load_base_model replaced by one that records its dtype and device, then stops the command."""
    def reached(model_cfg, dtype=None, device="cpu", compute_dtype=None):
        raise Reached({"dtype": dtype, "device": device, "model": model_cfg.name})

    monkeypatch.setattr(load, "load_base_model", reached)


def _loader_call(argv) -> dict:
    from chattune.cli import main

    with pytest.raises(Reached) as reached:
        main(argv)
    return reached.value.args[0]


@pytest.mark.parametrize("command", ["chat", "predict", "eval", "serve"])
def test_dtype_reaches_the_loader_from_each_command(loader_spy, command, varied_tiny_model_dir, tmp_path,
                                                    write_jsonl):
    import torch

    data = write_jsonl([{"instruction": "Who are you?", "output": "Tuna."}])
    extra = {"chat": ["--prompt", "hi"], "predict": ["--data", str(data), "--out", str(tmp_path / "p.jsonl")],
             "eval": ["--data", str(data), "--out", str(tmp_path / "eval")], "serve": []}[command]
    for dtype, expected in (("fp16", torch.float16), ("fp32", torch.float32), ("bf16", torch.bfloat16)):
        call = _loader_call([command, str(varied_tiny_model_dir), *extra, "--device", "cpu", "--dtype", dtype])
        assert call["dtype"] is expected and call["device"] == "cpu"


@pytest.mark.parametrize("command", ["chat", "serve"])
def test_a_run_dirs_training_precision_reaches_the_loader(monkeypatch, loader_spy, bf16_run, command):
    import torch

    extra = ["--prompt", "hi"] if command == "chat" else []
    for cuda_bf16, expected in ((True, torch.bfloat16), (False, torch.float32)):
        _machine(monkeypatch, fast_bf16=True, cuda_bf16=cuda_bf16)
        assert _loader_call([command, str(bf16_run), *extra, "--device", "cuda"])["dtype"] is expected
        assert _loader_call([command, str(bf16_run), *extra, "--device", "cpu"])["dtype"] is torch.float32
    assert _loader_call([command, str(bf16_run), *extra, "--device", "cpu", "--dtype", "fp16"])["dtype"] is torch.float16


def test_forcing_an_emulated_dtype_warns(monkeypatch, loader_spy, varied_tiny_model_dir, capsys):
    _machine(monkeypatch, fast_bf16=False)
    _loader_call(["chat", str(varied_tiny_model_dir), "--prompt", "hi", "--device", "cpu", "--dtype", "bf16"])
    assert "--dtype=bf16 on a CPU without AMX/AVX512-BF16" in capsys.readouterr().err


def _as_fp32_run(run_dir, out):
    """A copy of `run_dir` that says it trained in fp32 (summary.json), for choices read without weights."""
    shutil.copytree(run_dir, out)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "precision": "fp32"}))
    return out


def test_serve_loads_a_shared_base_in_the_precision_its_targets_agree_on(monkeypatch, bf16_run,
                                                                        varied_tiny_model_dir, tmp_path):
    import torch

    from chattune.serve.registry import group_precisions, load_registry, plan

    _machine(monkeypatch, fast_bf16=True, cuda_bf16=True)
    fp32_run = _as_fp32_run(bf16_run, tmp_path / "fp32-run")
    agreeing = plan([str(bf16_run), str(varied_tiny_model_dir)])
    assert list(group_precisions(agreeing, "cuda").values()) == ["bf16"]
    assert list(group_precisions(agreeing, "cpu").values()) == ["fp32"]
    assert list(group_precisions(plan([str(bf16_run), str(fp32_run)]), "cuda").values()) == ["fp32"]
    assert list(group_precisions(plan([str(bf16_run), str(fp32_run)]), "cpu", "bf16").values()) == ["bf16"]
    registry = load_registry([str(bf16_run), str(varied_tiny_model_dir)], device="cpu", dtype="bf16")
    model = registry.get("bf16-run").group.model
    assert model.get_base_model().get_input_embeddings().weight.dtype == torch.bfloat16
