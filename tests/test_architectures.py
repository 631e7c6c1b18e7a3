"""Architectures other than Llama (tiny random Qwen2 and GPT-NeoX): target discovery, explicit targets, training."""

import pytest
import torch

from chattune.config import ConfigError, load_config

ARCHITECTURES = {
    "qwen2": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "gpt_neox": ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"],
}


def _tiny_config(kind: str, tok):
    from transformers import GPTNeoXConfig, Qwen2Config

    common = {
        "vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 512, "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
    }
    if kind == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True)
    return GPTNeoXConfig(**common, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model_dirs(builtin_tokenizer_dir, tmp_path_factory) -> dict:
    """One tiny random model per architecture, with the built-in tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(builtin_tokenizer_dir)
    dirs = {}
    for kind in ARCHITECTURES:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_tiny_config(kind, tok))
        dirs[kind] = tmp_path_factory.mktemp(f"tiny-{kind}")
        model.save_pretrained(dirs[kind])
        tok.save_pretrained(dirs[kind])
    return dirs


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch_model_dir(request, model_dirs):
    return request.param, model_dirs[request.param]


def _cfg(model_dir, run_dir, *extra):
    return load_config(None, [
        f"model.name={model_dir}", f"run_dir={run_dir}", "name=a", "data.size=8", "train.max_steps=2",
        "train.batch_size=2", "train.grad_accum=1", "train.lr=1e-2", "train.precision=fp32", *extra,
    ])


def test_all_linear_discovers_each_architectures_own_layer_names(arch_model_dir):
    from transformers import AutoModelForCausalLM

    from chattune.model.adapters import find_linear_targets

    kind, path = arch_model_dir
    assert find_linear_targets(AutoModelForCausalLM.from_pretrained(path)) == ARCHITECTURES[kind]


def test_trains_with_discovered_and_explicit_targets(arch_model_dir, tmp_path):
    from chattune.training.trainer import train

    kind, path = arch_model_dir
    explicit = {"qwen2": "[q_proj,v_proj]", "gpt_neox": "[query_key_value,dense]"}[kind]
    for name, targets in (("all", "all-linear"), ("explicit", explicit)):
        outcome = train(_cfg(path, tmp_path / name, f"lora.targets={targets}"))
        assert outcome.summary["steps"] == 2 and torch.isfinite(torch.tensor(outcome.summary["final_loss"]))
        wanted = ARCHITECTURES[kind] if targets == "all-linear" else targets.strip("[]").split(",")
        assert sorted(outcome.model.peft_config["default"].target_modules) == sorted(wanted)
        adapted = {n.rsplit(".", 1)[-1] for n, m in outcome.model.named_modules() if hasattr(m, "lora_A")}
        assert adapted == set(wanted)
        assert any(p.abs().sum() > 0 for n, p in outcome.model.named_parameters() if "lora_B" in n)


def test_gpt_neox_names_as_explicit_targets_in_4bit(model_dirs, tmp_path):
    """Seed 003 names its own modules (qkv_proj, out_proj, ...); GPT-NeoX's names work the same way."""
    from chattune.training.trainer import train

    path = model_dirs["gpt_neox"]
    outcome = train(_cfg(path, tmp_path / "r", "lora.targets=[query_key_value,dense_h_to_4h]", "model.quantize=4bit"))
    layer = outcome.model.get_base_model().gpt_neox.layers[0].attention.query_key_value
    assert type(layer.base_layer).__name__ == "Linear4bit"
    assert torch.isfinite(torch.tensor(outcome.summary["final_loss"]))


def test_explicit_target_matching_nothing_names_the_models_linear_layers(arch_model_dir, tmp_path, monkeypatch):
    from chattune.training import trainer

    kind, path = arch_model_dir
    monkeypatch.setattr(trainer, "load_base_model", _must_not_load)
    with pytest.raises(ConfigError) as err:
        trainer.train(_cfg(path, tmp_path / "r", "lora.targets=[qkv_proj,out_proj]"))
    message = str(err.value)
    assert "lora.targets: qkv_proj, out_proj match no module" in message
    assert f"its linear layers are: {', '.join(ARCHITECTURES[kind])}" in message


def _must_not_load(*args, **kwargs):
    raise AssertionError("the weights must not load")


def test_embedding_target_of_a_tied_model_is_refused_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    """Seed 003 adapts the token embeddings; on a tied model the merged export would change the head too."""
    from chattune.training import trainer

    monkeypatch.setattr(trainer, "load_base_model", _must_not_load)
    with pytest.raises(ConfigError, match=r"model.embed_tokens is the input embedding .* shares its weight"):
        trainer.train(_cfg(tiny_model_dir, tmp_path / "r", "lora.targets=[embed_tokens,q_proj]"))
    assert not (tmp_path / "r").exists(), "nothing is left behind"
