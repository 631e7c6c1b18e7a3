"""model/checkpoint.py reads a checkpoint's stored dtype from its headers; load_base_model reads the shards by
pread exactly when the load converts them (a bf16 checkpoint loaded in fp32), and by mmap otherwise."""

import json

import pytest
import torch

from chattune.config import load_config
from chattune.model.checkpoint import local_shards, read_headers, stored_dtype


@pytest.fixture(scope="module")
def bf16_model_dir(tiny_model_dir, tmp_path_factory):
    """tiny_model_dir saved in bf16, in two shards with an index, as hub models ship."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("bf16-tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="4MB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_the_stored_dtype_is_the_one_most_bytes_are_in(tiny_model_dir, bf16_model_dir, tmp_path):
    from safetensors.torch import save_file

    assert stored_dtype(str(tiny_model_dir)) == torch.float32
    assert len(local_shards(bf16_model_dir)) >= 2, "the fixture is sharded"
    assert stored_dtype(str(bf16_model_dir)) == torch.bfloat16
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    save_file({"big": torch.zeros(64, 64, dtype=torch.float16), "norm": torch.zeros(64), "ids": torch.zeros(3, dtype=torch.long)},
              str(mixed / "model.safetensors"))
    headers = read_headers(mixed, local_shards(mixed))
    assert headers.kinds == {"big": "F16", "norm": "F32", "ids": "I64"} and headers.shapes["big"] == [64, 64]
    assert headers.dominant_dtype() == torch.float16, "8 KB of fp16 outweigh 256 B of fp32; integers do not count"


def test_no_readable_safetensors_gives_no_stored_dtype(tmp_path):
    assert stored_dtype("ORG/not-a-folder") is None
    assert stored_dtype(str(tmp_path)) is None, "a folder without safetensors (e.g. pytorch_model.bin)"
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    assert stored_dtype(str(tmp_path)) is None
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "absent.safetensors"}}))
    assert stored_dtype(str(tmp_path)) is None


def _backends_of(load, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    backends, original = [], modeling_utils.safe_open

    def spy(*args, **kwargs):
        backends.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(modeling_utils, "safe_open", spy)
        model = load()
    return set(backends), model


def test_a_converting_load_reads_by_pread_and_a_plain_one_maps(bf16_model_dir, monkeypatch):
    """bench/scale.py's 1.1B bf16 model loaded in fp32 peaked at 7,047 MB with mmap, 4,990 MB with pread."""
    from chattune.model.load import load_base_model

    model_cfg = load_config(None, [f"model.name={bf16_model_dir}"]).model
    backends, converted = _backends_of(lambda: load_base_model(model_cfg, dtype=torch.float32), monkeypatch)
    assert backends == {"pread"}
    assert {p.dtype for p in converted.parameters()} == {torch.float32}
    backends, kept = _backends_of(lambda: load_base_model(model_cfg, dtype=torch.bfloat16), monkeypatch)
    assert backends == {"mmap"}, "a load in the stored dtype keeps transformers' zero-copy mapping"
    kept = kept.state_dict()
    assert all(torch.equal(value.float(), kept[key].float()) for key, value in converted.state_dict().items()), \
        "pread gives the mapped load's weights, only converted"
