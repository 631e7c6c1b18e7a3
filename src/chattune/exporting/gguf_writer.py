"""Write a merged Llama- or Qwen2-architecture model as a GGUF file (f32, f16, q8_0, q4_0) for llama.cpp.

Follows llama.cpp's convert_hf_to_gguf: tensor names from gguf-py's name map, Llama's q/k
projection rows permuted into llama.cpp's rotary layout (Qwen2 keeps HF's order: llama.cpp runs it
with NEOX rotary), 1-D norms and biases kept f32, tied embeddings stored once (no output.weight),
and the tokenizer: a gpt2-style byte-level BPE, or a SentencePiece-style one (Llama-2's byte-fallback
BPE) as llama.cpp's 'llama' vocab with scores from the merge order (tokens, types, merges, special
ids, chat template). Quantized types
use gguf-py's own quantizers (gguf 0.19 has Q8_0 and Q4_0, no K-quants): q8_0 stores every matrix
in Q8_0; q4_0 stores the blocks' matrices in Q4_0 and the embedding / output head in Q8_0, as
llama.cpp keeps those at higher precision; a matrix whose rows are not whole 32-value blocks
stays f16. Other architectures, rotary scalings and other tokenizer models (Unigram, WordPiece) are
refused with the list of what is supported. Tensors are encoded and written one at a time, the
largest first (`_layout`), so the writer holds one encoded copy beside the model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from chattune.exporting.merge import ExportError

ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}  # HF model_type -> gguf-py MODEL_ARCH member
ROTARY_PERMUTED = {"llama"}
DTYPES = ("f16", "f32", "q8_0", "q4_0")
HIGH_PRECISION_TENSORS = ("token_embd.weight", "output.weight")  # q8_0 even in a q4_0 file


class GGUFExportError(ExportError):
    """A model this writer cannot express faithfully as GGUF."""


def check_supported(model, tokenizer) -> None:
    config = model.config
    if config.model_type not in ARCHITECTURES:
        raise GGUFExportError(f"GGUF export supports the architectures {', '.join(ARCHITECTURES)}; "
                              f"this model is {config.model_type!r}")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise GGUFExportError(f"GGUF export: rope type {rope.get('rope_type')!r} is not supported (only default)")
    if config.model_type == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise GGUFExportError("GGUF export: Llama models with attention/MLP biases are not supported")
    if getattr(config, "use_sliding_window", False):
        raise GGUFExportError("GGUF export: Qwen2 with use_sliding_window=true is not supported")
    if tokenizer_kind(tokenizer) is None:
        raise GGUFExportError("GGUF export supports byte-level BPE (gpt2-style) and SentencePiece-style BPE "
                              "(byte fallback + Metaspace, Llama-2 style) tokenizers; this one is neither")


def tokenizer_kind(tokenizer) -> str | None:
    """llama.cpp's tokenizer model for `tokenizer`: 'gpt2' (byte-level BPE), 'llama' (SentencePiece-style
    BPE: byte fallback, '▁' for spaces) or None (Unigram, WordPiece, ...: not written)."""
    backend = _backend_json(tokenizer)
    model = backend.get("model", {})
    if model.get("type") != "BPE":
        return None
    if model.get("byte_fallback"):
        pre = json.dumps(backend.get("pre_tokenizer")) + json.dumps(backend.get("normalizer"))
        return "llama" if "\u2581" in pre or "▁" in pre or "Metaspace" in pre else None
    return "gpt2"


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
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[_arch(model.config)])
    try:
        _add_model_metadata(writer, model.config, dtype, name)
        _add_tokenizer(writer, tokenizer, model.config.vocab_size)
        extra_stops = sorted(set(stop_ids or ()) - {tokenizer.eos_token_id})
        if extra_stops:
            writer.add_eot_token_id(extra_stops[0])
        layout = _layout(model)
        for gguf_name, shape, _ in layout:
            writer.add_tensor_info(gguf_name, *_stored_info(gguf_name, shape, dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, array, _ in _encoded(layout, dtype):  # one encoded tensor alive at a time
            writer.write_tensor_data(array)
            del array
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
    file_types = {"f16": "MOSTLY_F16", "f32": "ALL_F32", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}
    writer.add_file_type(gguf.LlamaFileType[file_types[dtype]])


def _arch(config):
    import gguf

    return getattr(gguf.MODEL_ARCH, ARCHITECTURES[config.model_type])


def _tensors(model, dtype: str):
    """(gguf name, array, GGML type or None) for every weight, in llama.cpp's layout and `dtype`,
    in the file's order; each is encoded only when the iteration reaches it."""
    return _encoded(_layout(model), dtype)


def _encoded(layout, dtype: str):
    for name, _, array in layout:
        yield (name, *encode_tensor(name, array(), dtype))


def _layout(model) -> list[tuple[str, tuple, object]]:
    """(gguf name, shape, a function giving the fp32 array in llama.cpp's layout) per weight, the
    largest first. Nothing is copied here (an fp32 weight's array is a view of it). The order
    matters for memory, not for llama.cpp: transformers loads a GGUF back by building a dict of
    every dequantized tensor, and each tensor passes through two fp32 copies on the way in; with
    the embedding and LM head first, those copies of the largest tensors come while the dict is
    still small (on Qwen2.5-0.5B the head alone is 545 MB)."""
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(_arch(config), config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    layout = []
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd.weight when output.weight is absent
        base, _, suffix = hf_name.rpartition(".")
        gguf_base = name_map.get_name(base)
        if gguf_base is None:
            raise GGUFExportError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}")
        layout.append((f"{gguf_base}.{suffix}", tuple(tensor.shape),
                       _array_of(tensor, hf_name, config)))
    return sorted(layout, key=lambda entry: -_count(entry[1]))  # stable: ties keep the HF order


def _array_of(tensor, hf_name: str, config):
    """A function giving `tensor` as a contiguous fp32 array, q/k rows permuted for llama.cpp."""
    import numpy as np

    def array():
        out = tensor.detach().float().cpu().numpy()
        rotary = hf_name.endswith(("q_proj.weight", "k_proj.weight"))
        if config.model_type in ROTARY_PERMUTED and rotary:
            kv = hf_name.endswith("k_proj.weight")
            heads = config.num_key_value_heads if kv else config.num_attention_heads
            out = permute_rotary(out, config.num_attention_heads, heads)
        return np.ascontiguousarray(out)

    return array


def _count(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def stored_type(name: str, shape, dtype: str):
    """The GGML type tensor `name` of `shape` is stored in within a `dtype` file."""
    import gguf

    types = gguf.GGMLQuantizationType
    if len(shape) < 2 or dtype == "f32":
        return types.F32
    if dtype == "f16":
        return types.F16
    kind = types.Q8_0 if dtype == "q8_0" or name in HIGH_PRECISION_TENSORS else types.Q4_0
    return types.F16 if shape[-1] % gguf.GGML_QUANT_SIZES[kind][0] else kind


def _stored_info(name: str, shape, dtype: str) -> tuple:
    """add_tensor_info's (shape, numpy dtype, bytes, raw type) for a tensor not yet encoded."""
    import gguf
    import numpy as np

    kind = stored_type(name, shape, dtype)
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        item = np.dtype(np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16)
        return shape, item, _count(shape) * item.itemsize, None
    stored = gguf.quant_shape_to_byte_shape(shape, kind)
    return stored, np.dtype(np.uint8), _count(stored), kind


def encode_tensor(name: str, array, dtype: str):
    """(stored array, GGML type for quantized bytes or None) of one tensor in a `dtype` file."""
    import gguf
    import numpy as np
    from gguf import quants

    kind = stored_type(name, array.shape, dtype)
    if kind == gguf.GGMLQuantizationType.F32:
        return array, None
    if kind == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), None
    return quants.quantize(array, kind), kind


def _backend_json(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GGUFExportError("GGUF export needs a fast (tokenizers-backed) tokenizer")
    return json.loads(backend.to_str())


def _add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """Tokens, token types, merges, special ids and chat template: llama.cpp's gpt2 vocab, or its
    SentencePiece ('llama') vocab with scores and byte tokens."""
    tokens, types = _vocab(tokenizer, vocab_size)
    kind = tokenizer_kind(tokenizer)
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer_name(tokenizer))
    else:
        types = [_BYTE if _BYTE_TOKEN.fullmatch(t) and k == _NORMAL else k for t, k in zip(tokens, types, strict=True)]
        writer.add_token_scores(merge_scores(tokens, _merges(tokenizer)))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer))
    for special in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{special}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{special}_token_id")(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(kind == "llama")  # Metaspace puts '▁' before the first word
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


_NORMAL, _BYTE = 1, 6  # gguf.TokenType.NORMAL, .BYTE
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece scores for llama.cpp, which merges the adjacent pair whose joined token scores
    highest: a token made by merge number r scores -r, so the earliest merge wins as in BPE; tokens
    no merge makes (characters, bytes, specials) score below every merged one."""
    rank = {}
    for number, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), number)
    floor = -float(len(merges) + 1)
    return [-float(rank[token]) if token in rank else floor for token in tokens]


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
