"""QLoRA with bitsandbytes on CPU: a 4-bit tiny Llama trains, reloads, chats, and exports into its dequantized base."""

import json

import pytest
import torch

from chattune import rundir
from chattune.config import ConfigError, load_config

IDS = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]])


def _cfg(model_dir, run_dir, *extra):
    return load_config(None, [
        f"model.name={model_dir}", f"run_dir={run_dir}", "name=q", "data.size=8", "data.eval_ratio=0.25",
        "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1", "train.lr=1e-2", "train.precision=fp32",
        "lora.dropout=0.0", *extra,
    ])


@pytest.fixture(scope="module")
def qlora_run(varied_tiny_model_dir, tmp_path_factory):
    from chattune.training.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "qlora"
    return train(_cfg(varied_tiny_model_dir, run_dir, "model.quantize=4bit", "train.optim=adamw_bnb_8bit"))


def _quantized_base_plus_adapter(run_dir):
    """What training computed: the 4-bit base (fp32 compute, bitsandbytes' standard path) + the adapter."""
    from peft import PeftModel

    from chattune.model.load import load_base_model
    from chattune.model.quant import keep_standard_4bit_path

    cfg = rundir.open_run_dir(run_dir).config()
    base = load_base_model(cfg.model, dtype=torch.float32)
    keep_standard_4bit_path(base)
    return PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()


def test_4bit_run_trains_the_adapter_on_a_4bit_base(qlora_run):
    model = qlora_run.model
    import bitsandbytes as bnb

    quantized = [m for m in model.get_base_model().modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 14, "7 linear layers x 2 blocks in 4 bits"
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"
    assert layer.base_layer.weight.quant_state.quant_type == "nf4"
    assert layer.base_layer.weight.quant_state.nested, "model.double_quant defaults to true"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n), "LoRA B moved from zero"
    records = [r for r in rundir.RunDir(qlora_run.run_dir).metrics() if "loss" in r]
    assert [r["step"] for r in records] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert not model.get_base_model().is_activation_checkpointing, "train.gradient_checkpointing=false is respected"


def test_4bit_adapter_reloads_and_reproduces_the_trained_model(qlora_run):
    trained = qlora_run.model.eval()
    from chattune.model.quant import keep_standard_4bit_path

    keep_standard_4bit_path(trained)
    with torch.no_grad():
        expected = trained(input_ids=IDS).logits
        got = _quantized_base_plus_adapter(qlora_run.run_dir)(input_ids=IDS).logits
    assert torch.allclose(expected, got, atol=1e-5)
    saved = rundir.open_run_dir(qlora_run.run_dir).config().model
    assert (saved.quantize, saved.quant_type, saved.double_quant) == ("4bit", "nf4", True)


def test_chat_loads_a_qlora_run_dir_on_its_4bit_base(qlora_run):
    from chattune.infer.chat import ChatModel, GenerationSettings

    chat = ChatModel.load(str(qlora_run.run_dir))
    layer = chat.model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"
    reply = chat.reply([{"role": "user", "content": "Who are you?"}], GenerationSettings(max_new_tokens=4))
    assert isinstance(reply, str)


def test_serve_keeps_a_qlora_run_off_a_full_precision_base(qlora_run, tmp_path):
    """Two runs on one base share it in serve, unless one was trained on the 4-bit base."""
    import shutil

    from chattune.serve.registry import plan

    plain = tmp_path / "plain"
    shutil.copytree(qlora_run.run_dir, plain)
    config = plain / rundir.CONFIG
    config.write_text(config.read_text().replace("quantize: 4bit", "quantize: none"))
    quantized, full = plan([str(qlora_run.run_dir), str(plain)])
    assert quantized.base_key[0] == full.base_key[0] and quantized.base_key != full.base_key


@pytest.fixture(scope="module")
def strong_qlora_run(qlora_run, tmp_path_factory):
    """qlora_run's dir with large LoRA B weights, so the adapter changes the outputs a lot."""
    import shutil

    from adapter_helpers import strengthen_adapter

    run_dir = tmp_path_factory.mktemp("runs") / "strong"
    shutil.copytree(qlora_run.run_dir, run_dir)
    strengthen_adapter(run_dir)
    return run_dir


def test_export_merges_into_the_dequantized_base(strong_qlora_run, tmp_path, varied_tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from chattune.cli import main

    out = tmp_path / "merged"
    assert main(["export", str(strong_qlora_run), "--out", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert type(merged.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    with torch.no_grad():
        reference = _quantized_base_plus_adapter(strong_qlora_run)(input_ids=IDS).logits
        got = merged(input_ids=IDS).logits
        full_precision_base = AutoModelForCausalLM.from_pretrained(varied_tiny_model_dir, dtype=torch.float32)
        naive = PeftModel.from_pretrained(full_precision_base, str(strong_qlora_run / "adapter"))(input_ids=IDS).logits
    assert (got - reference).abs().max() <= 1e-4
    assert (naive - reference).abs().max() > 1e-2, "merging into the unquantized base would not reproduce the run"
    report = json.loads((out / "export_report.json").read_text())["merged"]
    assert report["passed"] and report["max_logit_diff"] <= 1e-4 and report["greedy_agreement"] == 1.0


@pytest.mark.parametrize(
    "extra",
    [("lora.method=adalora", "lora.adalora_target_r=4", "lora.adalora_tfinal=1", "train.max_steps=3"),
     ("lora.method=dora", "train.gradient_checkpointing=true")],
)
def test_4bit_with_adalora_or_dora(tiny_model_dir, tmp_path, extra):
    """Seed 001 trains AdaLoRA on a 4-bit Baichuan2; DoRA on 4 bits, with gradient checkpointing."""
    from chattune.training.trainer import train

    outcome = train(_cfg(tiny_model_dir, tmp_path / "run", "model.quantize=4bit", "data.eval_ratio=0", *extra))
    model = outcome.model
    assert torch.isfinite(torch.tensor(outcome.summary["final_loss"]))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"
    config = model.peft_config["default"]
    if "lora.method=adalora" in extra:
        kept = [int(torch.as_tensor(mask).sum()) for mask in config.rank_pattern.values()]
        assert sum(kept) == 4 * len(kept) and min(kept) < 8, "the budget shrank from r=8 to 4 on average"
    else:
        assert config.use_dora and model.get_base_model().is_activation_checkpointing


def test_8bit_run_trains(tiny_model_dir, tmp_path):
    from chattune.training.trainer import train

    outcome = train(_cfg(tiny_model_dir, tmp_path / "run", "model.quantize=8bit", "data.eval_ratio=0"))
    layer = outcome.model.get_base_model().model.layers[0].mlp.down_proj
    assert type(layer.base_layer).__name__ == "Linear8bitLt"
    assert outcome.summary["steps"] == 2 and torch.isfinite(torch.tensor(outcome.summary["final_loss"]))
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_quantized_linear_layers_are_found_as_targets(tiny_model_dir):
    from chattune.model.adapters import find_linear_targets
    from chattune.model.load import load_base_model

    for quantize in ("4bit", "8bit"):
        model_cfg = load_config(None, [f"model.name={tiny_model_dir}", f"model.quantize={quantize}"]).model
        model = load_base_model(model_cfg)
        kinds = {type(m).__name__ for m in model.modules()}
        assert {"Linear4bit", "Linear8bitLt"} & kinds
        assert find_linear_targets(model) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_paged_optimizer_on_cpu_is_a_note(tmp_path):
    from chattune.training.methods import check_optimizer

    assert "unpaged" in check_optimizer("paged_adamw_8bit", "cpu")  # bitsandbytes 0.50 falls back on CPU
    assert check_optimizer("adamw_bnb_8bit", "cpu") is None  # its 8-bit state runs on CPU


def test_optimizer_that_cannot_step_here_is_a_config_error(monkeypatch):
    """How bitsandbytes fails on a device without a kernel (simulated: this CPU has them all)."""
    from transformers import Trainer

    from chattune.training.methods import check_optimizer

    class NoKernel(torch.optim.SGD):
        def step(self, closure=None):
            raise NotImplementedError("Could not run 'bitsandbytes::optimizer_update_8bit_blockwise' on this backend")

    monkeypatch.setattr(Trainer, "get_optimizer_cls_and_kwargs", staticmethod(lambda args, model=None: (NoKernel, {"lr": 1.0})))
    with pytest.raises(ConfigError, match=r"train.optim=adamw_bnb_8bit cannot run on cpu .*optimizer_update_8bit"):
        check_optimizer("adamw_bnb_8bit", "cpu")


def test_missing_bitsandbytes_is_reported_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    from chattune.training import trainer

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real_find_spec(n, *a))
    monkeypatch.setattr(trainer, "load_base_model", _must_not_load)
    with pytest.raises(ConfigError, match=r"model.quantize=4bit needs bitsandbytes"):
        trainer.train(_cfg(tiny_model_dir, tmp_path / "run", "model.quantize=4bit"))


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model must not load")


@pytest.mark.slow
def test_qlora_on_the_builtin_model_trains_exports_and_chats(tmp_path):
    """SmolLM2-135M in 4 bits: a few steps, merged into its dequantized base, and the merge answers."""
    from chattune.exporting.pipeline import export_run
    from chattune.infer.chat import ChatModel, GenerationSettings
    from chattune.training.trainer import train

    cfg = load_config("configs/demo.yaml", [
        f"run_dir={tmp_path / 'run'}", "data.size=6", "data.eval_ratio=0.34", "train.max_steps=2",
        "train.batch_size=2", "model.quantize=4bit",
    ])  # 2 held-out conversations: the export gate generates from each, through the 4-bit layers
    outcome = train(cfg)
    assert outcome.summary["steps"] == 2 and torch.isfinite(torch.tensor(outcome.summary["final_loss"]))
    report = export_run(outcome.run_dir, tmp_path / "merged")[0]
    assert report.passed and report.max_logit_diff <= 1e-3 and report.greedy_agreement == 1.0
    chat = ChatModel.load(str(tmp_path / "merged"))
    assert type(chat.model.model.layers[0].self_attn.q_proj).__name__ == "Linear"  # a plain fp32 model
    reply = chat.reply([{"role": "user", "content": "Who are you?"}], GenerationSettings(max_new_tokens=24))
    assert len(reply.strip()) > 0


def test_a_quantized_load_reads_shards_by_pread_and_gets_the_same_weights(tiny_model_dir, monkeypatch):
    """model.load.shards_read_not_mapped: safe_open is asked for backend=pread during a quantized load only
    (no shard stays mapped by the norms' views), the weights are the mmap load's, and safe_open is put back."""
    import transformers.modeling_utils as modeling_utils

    from chattune.model.load import load_base_model

    model_cfg = load_config(None, [f"model.name={tiny_model_dir}", "model.quantize=4bit"]).model
    mapped = load_base_model(model_cfg).state_dict()
    backends, original = [], modeling_utils.safe_open

    def spy(*args, **kwargs):
        backends.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_open", spy)
    with monkeypatch.context() as patched:
        patched.setattr("chattune.model.load.shards_read_not_mapped", __import__("contextlib").nullcontext)
        load_base_model(model_cfg)
    assert backends and set(backends) == {"mmap"}, "without the switch transformers maps the shards"
    backends.clear()
    read = load_base_model(model_cfg).state_dict()
    assert backends and set(backends) == {"pread"} and modeling_utils.safe_open is spy
    assert mapped.keys() == read.keys() and all(torch.equal(mapped[k], read[k]) for k in mapped)
    full = load_config(None, [f"model.name={tiny_model_dir}"]).model
    backends.clear()
    load_base_model(full)
    assert set(backends) == {"mmap"}, "a full-precision base keeps its zero-copy mapped weights"


@pytest.mark.parametrize("checkpointing", ["false", "true"])
def test_a_bf16_qlora_run_keeps_its_frozen_weights_in_bf16(tiny_model_dir, tmp_path, checkpointing):
    """model.quant.freeze_keeping_dtype: no fp32 copy of the embedding, norms or head (peft's upcast is for
    fp16); the adapter trains in fp32, the forgetting guard scores the model outside autocast."""
    from chattune.training.trainer import train

    outcome = train(_cfg(tiny_model_dir, tmp_path / "run", "model.quantize=4bit", "data.eval_ratio=0",
                         "train.precision=bf16", "train.forgetting=true",
                         f"train.gradient_checkpointing={checkpointing}"))
    model = outcome.model
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and type(p).__name__ != "Params4bit"}
    assert frozen == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    layer = model.get_base_model().model.layers[0].mlp.down_proj.base_layer
    assert type(layer).__name__ == "Linear4bit" and layer.compute_dtype == torch.bfloat16
    assert model.get_base_model().is_activation_checkpointing == (checkpointing == "true")
    records = [r for r in rundir.RunDir(outcome.run_dir).metrics() if "loss" in r]
    assert len(records) == 2 and all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in records)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n), "the adapter learned"
    guard = outcome.summary["forgetting"]
    assert torch.isfinite(torch.tensor([guard["base_loss"], guard["tuned_loss"], guard["kl_to_base"]])).all()
