"""Write a merged Llama-architecture model as a GGUF file (f16 or f32) for llama.cpp.

Follows llama.cpp's convert_hf_to_gguf for Llama: tensor names from gguf-py's name map,
q/k projection rows permuted into llama.cpp's rotary layout, 1-D norms kept f32, tied
embeddings stored once (no output.weight), and a gpt2-style BPE tokenizer (tokens, types,
merges, special ids, chat template). It does not quantize (no Q4/Q8) and handles only
`model_type == "llama"` with the default rotary embedding and a byte-level BPE tokenizer;
anything else is refused with a clear message.
"""

from __future__ import annotations

import json
from pathlib import Path

from chattune.exporting.merge import ExportError

ARCH = "llama"
DTYPES = ("f16", "f32")


class GGUFExportError(ExportError):
    """A model this writer cannot express faithfully as GGUF."""


def check_supported(model, tokenizer) -> None:
    config = model.config
    if config.model_type != ARCH:
        raise GGUFExportError(f"GGUF export supports Llama-architecture models only; this one is {config.model_type!r}")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise GGUFExportError(f"GGUF export: rope type {rope.get('rope_type')!r} is not supported (only default)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise GGUFExportError("GGUF export: Llama models with attention/MLP biases are not supported")
    if _backend_json(tokenizer).get("model", {}).get("type") != "BPE":
        raise GGUFExportError("GGUF export: only byte-level BPE (gpt2-style) tokenizers are supported")


def permute_rotary(weights, n_head: int, n_head_kv: int | None = None):
    """HF's q/k row order -> llama.cpp's (convert_hf_to_gguf's LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(model, tokenizer, path: Path, dtype: str = "f16", name: str = "chattune export",
               stop_ids: set[int] | None = None) -> None:
    """Write `model` (a merged LlamaForCausalLM) and `tokenizer` to `path`.

    `stop_ids` (end-of-turn ids) other than EOS are recorded as llama.cpp's end-of-turn token.
    """
    import gguf

    if dtype not in DTYPES:
        raise GGUFExportError(f"GGUF dtype must be one of {DTYPES}, got {dtype!r}")
    check_supported(model, tokenizer)
    writer = gguf.GGUFWriter(str(path), ARCH)
    try:
        _add_model_metadata(writer, model.config, dtype, name)
        _add_tokenizer(writer, tokenizer, model.config.vocab_size)
        extra_stops = sorted(set(stop_ids or ()) - {tokenizer.eos_token_id})
        if extra_stops:
            writer.add_eot_token_id(extra_stops[0])
        for gguf_name, array in _tensors(model, dtype):
            writer.add_tensor(gguf_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _add_model_metadata(writer, config, dtype: str, name: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    writer.add_file_type(file_type)


def _tensors(model, dtype: str):
    """(gguf name, numpy array) for every weight, in llama.cpp's layout and dtype."""
    import gguf
    import numpy as np

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd.weight when output.weight is absent
        base, _, suffix = hf_name.rpartition(".")
        gguf_base = name_map.get_name(base)
        if gguf_base is None:
            raise GGUFExportError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}")
        array = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            array = permute_rotary(array, config.num_attention_heads, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            array = permute_rotary(array, config.num_attention_heads, config.num_key_value_heads)
        if dtype == "f16" and array.ndim > 1:
            array = array.astype(np.float16)
        yield f"{gguf_base}.{suffix}", np.ascontiguousarray(array)


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GGUFExportError("GGUF export needs a fast (tokenizers-backed) tokenizer")
    return json.loads(backend.to_str())


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Tokens, token types, merges, special ids and chat template (llama.cpp's gpt2 vocab)."""
    tokens, types = _vocab(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer))
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _merges(tokenizer) -> list[str]:
    merges = _backend_json(tokenizer)["model"].get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's pre-tokenizer name for the two byte-level splits chattune recognises.

    Plain byte-level with the GPT-2 regex -> 'gpt-2'; SmolLM's digits + byte-level ->
    'smollm'. llama.cpp identifies other pre-tokenizers by a hash table chattune does not
    carry; they get 'default', with which llama.cpp may split some texts differently.
    """
    pre = _backend_json(tokenizer).get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [(p.get("type"), p.get("individual_digits"), p.get("use_regex")) for p in parts]
    if kinds == [("ByteLevel", None, True)]:
        return "gpt-2"
    if kinds == [("Digits", True, None), ("ByteLevel", None, True)]:
        return "smollm"
    return "default"
