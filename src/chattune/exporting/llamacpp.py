"""Run an exported GGUF in llama.cpp itself (llama-cpp-python): its tokens, logits and greedy ids.

The export gate reads a GGUF back with transformers; this module asks the runtime users actually
run. Given the held-out texts the gate already encoded, it returns the same `fidelity.Outputs`
(teacher-forced logits per text, greedy ids per prompt) computed by llama.cpp, and the share of
texts llama.cpp's own tokenizer encodes exactly as the training tokenizer. llama-cpp-python is
optional: it ships as a source archive that compiles llama.cpp (bench/README.md: the build time),
so `available()` says whether it is installed. It does not write or gate anything (pipeline.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from chattune.data.templates import render
from chattune.exporting.fidelity import Outputs


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def open_gguf(path: Path, n_ctx: int = 512):
    """The file in llama.cpp with logits kept for every position (teacher forcing needs them all)."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                 n_threads=max(1, os.cpu_count() or 1), n_batch=n_ctx)


def outputs(llm, full_ids: list, prompt_ids: list, stop_ids: set[int], max_new_tokens: int = 24) -> Outputs:
    """fidelity.measure's numbers from llama.cpp: logits of each full text, greedy ids of each prompt."""
    import numpy as np
    import torch

    logits = []
    for ids in full_ids:
        tokens = ids[0].tolist()
        llm.reset()
        llm.eval(tokens)
        logits.append(torch.from_numpy(np.array(llm.scores[: len(tokens)], dtype=np.float32)))
    greedy = []
    for ids in prompt_ids:
        llm.reset()
        llm.eval(ids[0].tolist())
        row = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            row.append(token)
            if token in stop_ids:
                break
            llm.eval([token])
        greedy.append(row)
    return Outputs(logits, greedy)


def tokenizer_agreement(llm, reference_tok, conversations: list[list[dict]]) -> float:
    """Share of rendered conversations llama.cpp tokenizes (specials parsed) as the training tokenizer does."""
    same = 0
    for messages in conversations:
        text = render(reference_tok, messages, add_generation_prompt=messages[-1]["role"] != "assistant")
        ours = reference_tok.encode(text, add_special_tokens=False)
        same += llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ours
    return same / len(conversations) if conversations else 0.0


K_QUANTS = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
            "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def quantize(source: Path, target: Path, kind: str) -> None:
    """llama.cpp's own quantizer (llama-quantize's library call) from an f32 GGUF to a K-quant type;
    rows that are not whole 256-value super-blocks get llama.cpp's own fallback type, as llama-quantize does."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[kind])
    params.nthread = max(1, os.cpu_count() or 1)
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to {kind} (code {code})")
