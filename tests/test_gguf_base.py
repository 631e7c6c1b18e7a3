"""A GGUF file as a base model (model/gguf_base.py): checked before work, converted once by content,
the same weights as the model it was written from, and a run on it found again by chat."""

from __future__ import annotations

import shutil

import pytest

from chattune.model import gguf_base
from chattune.models import ModelSourceError, resolve_model


@pytest.fixture(scope="module")
def tiny_gguf(varied_tiny_model_dir, tmp_path_factory):
    """The untied tiny Llama written as an f32 GGUF by chattune's own exporter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chattune.exporting.gguf_writer import write_gguf

    model = AutoModelForCausalLM.from_pretrained(varied_tiny_model_dir).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    write_gguf(model, AutoTokenizer.from_pretrained(varied_tiny_model_dir), path, "f32")
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CHATTUNE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_gguf_converts_once_to_the_same_weights(
    tiny_gguf, varied_tiny_model_dir, home, monkeypatch
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(str(tiny_gguf))
    assert folder.startswith(str(home / "models" / "gguf-"))
    converted = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    original = AutoModelForCausalLM.from_pretrained(varied_tiny_model_dir).state_dict()
    assert converted.keys() == original.keys()
    for name, tensor in original.items():  # f32 in, f32 out: nothing to round
        assert torch.equal(converted[name], tensor), name
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (
        tokenizer.chat_template
        and tokenizer.eos_token == AutoTokenizer.from_pretrained(varied_tiny_model_dir).eos_token
    )

    def refuse(*_):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(gguf_base, "convert_gguf", refuse)
    assert resolve_model(str(tiny_gguf)) == folder  # the same file: found by its stamp
    copy = tiny_gguf.parent / "renamed.gguf"
    shutil.copy(tiny_gguf, copy)
    assert resolve_model(str(copy)) == folder  # the same bytes elsewhere: found by content


def test_a_changed_file_is_converted_anew(tiny_gguf, home, tmp_path):
    first = resolve_model(str(tiny_gguf))
    edited = tmp_path / "edited.gguf"
    data = bytearray(tiny_gguf.read_bytes())
    data[-1] ^= 0xFF  # last byte of the last tensor
    edited.write_bytes(bytes(data))
    assert resolve_model(str(edited)) != first


def _gguf(path, architecture: str, tensor):
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unloadable_files_are_refused_before_any_work_with_what_works(tmp_path, home, monkeypatch):
    import numpy as np

    monkeypatch.setattr(
        gguf_base, "convert_gguf", lambda *_: pytest.fail("converted a refused file")
    )
    encoder = _gguf(tmp_path / "t5.gguf", "t5", np.zeros((4, 4), np.float32))
    with pytest.raises(
        ModelSourceError, match=r"architecture 't5' cannot be loaded.*these can: .*qwen2"
    ):
        resolve_model(str(encoder))
    integers = _gguf(tmp_path / "ints.gguf", "llama", np.zeros((4, 4), np.int32))
    with pytest.raises(
        ModelSourceError, match=r"tensor types I32 cannot be dequantized.*these can: .*Q4_K"
    ):
        resolve_model(str(integers))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ModelSourceError, match="not a readable GGUF file"):
        resolve_model(str(junk))
    assert not (home / "models").exists() or not list((home / "models").iterdir())


def test_a_run_on_a_gguf_base_records_it_and_chat_finds_it_again(tiny_gguf, home, tmp_path):
    from chattune.adapter_base import recorded_base
    from chattune.config import load_config
    from chattune.infer.chat import ChatModel, GenerationSettings
    from chattune.training.trainer import train

    outcome = train(
        load_config(
            None,
            [
                f"model.name={tiny_gguf}",
                f"run_dir={tmp_path / 'run'}",
                "data.size=8",
                "data.eval_ratio=0",
                "train.max_steps=1",
                "train.batch_size=2",
                "train.grad_accum=1",
                "train.precision=fp32",
            ],
        )
    )
    assert (outcome.run_dir / "config.yaml").read_text().count(
        str(tiny_gguf)
    ) == 1  # the GGUF, not the cache
    assert recorded_base(outcome.run_dir / "adapter") == resolve_model(str(tiny_gguf))
    chat = ChatModel.load(
        str(outcome.run_dir)
    )  # resolves the recorded GGUF again, adapter checks included
    reply = chat.reply([{"role": "user", "content": "Hi"}], GenerationSettings(max_new_tokens=4))
    assert reply == chat.reply(
        [{"role": "user", "content": "Hi"}], GenerationSettings(max_new_tokens=4)
    )
