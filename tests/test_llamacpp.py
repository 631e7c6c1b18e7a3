"""Exported GGUF files run by llama.cpp itself (llama-cpp-python): tokens, greedy ids and KL against the run.

llama-cpp-python ships as a source archive that compiles llama.cpp; `make test` builds it first
(`make llamacpp`). Where it is not installed (a bare pytest run) these tests are skipped with that reason.
"""

import json

import pytest

from chattune.exporting import llamacpp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not llamacpp.available(), reason=(
        "llama-cpp-python is not installed: `make llamacpp` (a dependency of `make test`) compiles "
        "it once per machine (about 7 CPU-minutes)")),
]


def test_llamacpp_reads_the_exported_file_as_the_run_computes(tiny_run, tmp_path):
    """f32: llama.cpp's greedy ids equal base + adapter's on every held-out prompt, its tokenizer gives the
    training ids; q8_0: its mean KL stays under the gate's tolerance (it also rounds activations to 8 bits)."""
    from chattune.exporting.pipeline import KL_TOLERANCE, export_run

    for dtype in ("f32", "q8_0"):
        export_run(tiny_run, tmp_path / dtype, fmt="gguf", gguf_dtype=dtype)
        report = json.loads((tmp_path / dtype / "export_report.json").read_text())
        ran = report["llama_cpp"]
        assert ran["installed"] and ran["tokenizer_agreement"] == 1.0, ran
        if dtype == "f32":
            assert ran["greedy_agreement"] == 1.0, ran
            # fp32 on both sides; the sums run in another order: relative error ~ 2^-24 x sqrt(hidden)
            # per layer, far below 1e-3 of the logits' range
            assert ran["max_logit_diff"] <= 1e-3 * max(1.0, _logit_range(tiny_run)), ran
        else:
            assert ran["mean_kl"] <= KL_TOLERANCE["gguf-q8_0"], ran


def test_llamacpp_tokenizes_a_sentencepiece_style_export_like_transformers(tmp_path):
    """The scores written for a Llama-2-style vocabulary make llama.cpp's highest-score-first merging give
    BPE's ids, byte fallback and the leading '▁' included."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from chattune.exporting.gguf_writer import write_gguf
    from gguf_helpers import sentencepiece_style_tokenizer

    tok = sentencepiece_style_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    write_gguf(LlamaForCausalLM(config).eval(), tok, tmp_path / "spm.gguf", "f32")
    llm = llamacpp.open_gguf(tmp_path / "spm.gguf", n_ctx=64)
    try:
        for text in ["The quick brown fox.", "Stocks fell after the lazy report", "天气很好",
                     "emoji 🐟 and ünïcode", "two  spaces", "learned its new name: Tuna"]:
            assert llm.tokenize(text.encode(), add_bos=False) == tok(text, add_special_tokens=False)["input_ids"], text
    finally:
        llm.close()


def _logit_range(run_dir) -> float:
    from chattune import rundir

    loaded = rundir.load_for_inference(run_dir)
    import torch

    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([[1, 520, 1110, 3457, 28]])).logits
    return float(logits.max() - logits.min())


def test_k_quants_come_from_llama_cpp_and_read_back_close(tmp_path):
    """q4_k_m / q6_k: an f32 file quantized by llama.cpp's own quantizer; transformers reads the K-quant
    blocks back (the gate's read-back) and its next-token distributions stay near the f32 model's."""
    import torch
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from chattune.exporting.gguf_writer import write_gguf
    from chattune.exporting.pipeline import KL_TOLERANCE, load_gguf
    from chattune.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    write_gguf(model, tok, tmp_path / "model-f32.gguf", "f32")
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog, twice.")["input_ids"]])
    with torch.inference_mode():
        reference = torch.log_softmax(model(ids).logits.double(), -1)
    for kind, block in (("q4_k_m", Q.Q4_K), ("q6_k", Q.Q6_K)):
        name = f"model-{kind}.gguf"
        llamacpp.quantize(tmp_path / "model-f32.gguf", tmp_path / name, kind)
        types = {t.name: t.tensor_type for t in GGUFReader(tmp_path / name).tensors}
        assert types["blk.0.attn_q.weight"] == block and types["blk.0.attn_norm.weight"] == Q.F32, types
        loaded, _ = load_gguf(tmp_path, name)
        with torch.inference_mode():
            candidate = torch.log_softmax(loaded(ids).logits.double(), -1)
        kl = float((reference.exp() * (reference - candidate)).sum(-1).mean())
        assert 0 < kl <= KL_TOLERANCE[f"gguf-{kind}"], (kind, kl)


def test_export_writes_a_k_quant_behind_its_gate(tiny_run, tmp_path):
    from chattune.exporting.pipeline import KL_TOLERANCE, export_run, gguf_filename

    report = export_run(tiny_run, tmp_path / "q6", fmt="gguf", gguf_dtype="q6_k")[-1]
    assert report.gate == "kl" and report.tolerance == KL_TOLERANCE["gguf-q6_k"] and report.passed
    written = json.loads((tmp_path / "q6" / "export_report.json").read_text())
    assert written["type"] == "q6_k" and written["llama_cpp"]["tokenizer_agreement"] == 1.0
    assert sorted(p.name for p in (tmp_path / "q6").iterdir()) == ["export_report.json", gguf_filename("q6_k")]
