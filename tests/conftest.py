"""Shared fixtures: the built-in tokenizer and a tiny random Llama built from a config (offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def builtin_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer (with chat template), read from the bundled GGUF."""
    from transformers import AutoTokenizer

    from chattune.models import builtin_gguf_path

    gguf = builtin_gguf_path("smollm2-135m-instruct")
    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(builtin_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(builtin_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(builtin_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer, hidden-64 Llama with random weights and the built-in tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(builtin_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def varied_tiny_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """tiny_model_dir with larger, untied random weights. The tied tiny model greedily repeats
    its last input token ("\\n"), so greedy-equality tests on it would compare blank strings."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    config.initializer_range = 0.2
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("varied-tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture
def write_jsonl(tmp_path):
    import json

    def write(rows, name="data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def straight(tiny_model_dir, tmp_path_factory):
    """The uninterrupted 6-step resume reference run (read-only: tests copy it before changing it)."""
    from chattune.training.trainer import train
    from resume_helpers import resume_cfg

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(resume_cfg(tiny_model_dir, run_dir, "train.max_steps=6", "train.save_every=2"))
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(varied_tiny_model_dir, tmp_path_factory):
    """A trained tiny run whose LoRA B weights are then made large, so the adapter matters."""
    from adapter_helpers import strengthen_adapter
    from chattune.config import load_config
    from chattune.training.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config(None, [
        f"model.name={varied_tiny_model_dir}", f"run_dir={run_dir}", "name=tiny", "data.size=12",
        "data.eval_ratio=0.25", "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1",
        "train.precision=fp32", "lora.dropout=0.0",
    ])
    train(cfg)
    strengthen_adapter(run_dir)
    return run_dir


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run where CUDA is; elsewhere they are reported as skipped, with the reason."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False on this machine "
                                   "(they run on a GPU machine: pytest -m gpu)")
    for item in gpu_items:
        item.add_marker(skip)
