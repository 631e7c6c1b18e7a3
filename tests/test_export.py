"""Export on a tiny random Llama: merge fidelity, the gate refusing a broken merge, GGUF round trip."""

import json

import pytest
import torch

from chattune import rundir
from chattune.cli import main
from chattune.config import load_config


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def _base_and_adapter(run_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = rundir.open_run_dir(run_dir).config()
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name, dtype=torch.float32)
    base_logits_of = lambda ids: _logits(base, ids)  # noqa: E731 - evaluated before wrapping
    ids = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]])
    base_logits = base_logits_of(ids)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    return model, ids, base_logits


def test_hf_export_matches_base_plus_adapter(tiny_run, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = tmp_path / "merged"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    reference, ids, base_logits = _base_and_adapter(tiny_run)
    ref_logits = _logits(reference, ids)
    assert (ref_logits - base_logits).abs().max() > 1e-2, "the adapter must change the outputs"
    assert (_logits(merged, ids) - ref_logits).abs().max() <= 1e-4
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / rundir.TEMPLATE).read_text() == (tiny_run / rundir.TEMPLATE).read_text()
    gen = GenerationConfig.from_pretrained(out)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    report = json.loads((out / "export_report.json").read_text())
    assert report["merged"]["passed"] and report["merged"]["max_logit_diff"] <= 1e-4
    assert report["merged"]["greedy_agreement"] == 1.0
    assert report["merged"]["source"].startswith("the run's eval data")


@pytest.mark.parametrize("path", ["shards", "whole model"])
def test_gate_refuses_corrupted_merge_and_writes_nothing(tiny_run, tmp_path, monkeypatch, capsys, path):
    from chattune.exporting import merge as merge_module
    from chattune.exporting import pipeline, shards

    def corrupted_merge(loaded):
        merge_module.merge(loaded)
        with torch.no_grad():
            loaded.model.model.layers[0].mlp.down_proj.weight.add_(0.5)

    def corrupted_read(file):  # the same +0.5, landing in the shard-wise merge
        tensors, metadata = read_shard(file)
        tensors["model.layers.0.mlp.down_proj.weight"] += 0.5
        return tensors, metadata

    read_shard = shards.read_shard
    if path == "shards":
        monkeypatch.setattr(shards, "read_shard", corrupted_read)
    else:
        monkeypatch.setattr(pipeline, "shard_plan", lambda run: (None, "as asked by the test"))
        monkeypatch.setattr(pipeline, "merge", corrupted_merge)
    (tmp_path / "exports").mkdir()
    out = tmp_path / "exports" / "broken"
    assert main(["export", str(tiny_run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "fidelity gate failed" in err and "max |logit diff|" in err
    assert not out.exists()
    assert not any((tmp_path / "exports").iterdir()), "no temporary folder may be left behind"
    assert main(["export", str(tiny_run), "--out", str(out), "--force"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["forced"] is True and report["merged"]["passed"] is False


def test_export_refuses_existing_output(tiny_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(tiny_run), "--out", str(out)]) == 2
    assert (out / "keep.txt").read_text() == "mine"


def test_quantized_runs_are_recognised_by_model_quantize():
    """QLoRA runs merge into their dequantized base (tests/test_qlora.py)."""
    from chattune.exporting.merge import is_quantized_run

    assert is_quantized_run(load_config(None, ["model.quantize=4bit"]))
    assert is_quantized_run(load_config(None, ["model.quantize=8bit"]))
    assert not is_quantized_run(load_config(None, []))


@pytest.mark.slow  # > ~15 s on 2 cores: llama.cpp-style conversion and generation
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_gguf_round_trip_greedy_outputs_match(tiny_run, tmp_path, dtype):
    from gguf import GGUFReader

    from chattune.exporting.pipeline import export_run, gguf_filename, load_gguf

    out = tmp_path / f"gguf-{dtype}"
    reports = export_run(tiny_run, out, fmt="gguf", gguf_dtype=dtype)
    gguf_report = reports[-1]
    assert gguf_report.passed and gguf_report.greedy_agreement == 1.0
    assert gguf_report.tokenizer_agreement == 1.0
    if dtype == "f32":
        assert gguf_report.max_logit_diff <= 1e-4
    # Independently: the file, loaded back, generates what base + adapter generates.
    model, gguf_tok = load_gguf(out, gguf_filename(dtype))
    reference, _, _ = _base_and_adapter(tiny_run)
    text = gguf_tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], tokenize=False,
                                        add_generation_prompt=True)
    ids = torch.tensor([gguf_tok.encode(text, add_special_tokens=False)])
    kwargs = {"max_new_tokens": 12, "do_sample": False, "attention_mask": torch.ones_like(ids), "pad_token_id": 2}
    with torch.inference_mode():
        generated = model.generate(ids, **kwargs)
        assert torch.equal(generated, reference.generate(input_ids=ids, **kwargs))
    assert len(set(generated[0, ids.shape[1]:].tolist())) > 3, "a non-degenerate continuation"
    fields = GGUFReader(out / gguf_filename(dtype)).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.chat_template"].contents() == (tiny_run / rundir.TEMPLATE).read_text()
    assert fields["tokenizer.ggml.eos_token_id"].contents() == gguf_tok.eos_token_id
    assert len(fields["tokenizer.ggml.tokens"].contents()) == model.config.vocab_size


@pytest.mark.slow  # > ~15 s on 2 cores: llama.cpp-style conversion and generation
def test_gguf_of_tied_embeddings_has_no_output_tensor(tiny_model_dir, tmp_path):
    """The shared tiny model ties lm_head to the embeddings, as SmolLM2 does."""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chattune.exporting.gguf_writer import write_gguf
    from chattune.exporting.pipeline import load_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings
    write_gguf(model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "tied.gguf", "f32")
    names = {t.name for t in GGUFReader(tmp_path / "tied.gguf").tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    assert "blk.1.attn_q.weight" in names and "blk.1.ffn_gate.weight" in names
    loaded, _ = load_gguf(tmp_path, "tied.gguf")
    ids = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]])
    assert (_logits(loaded, ids) - _logits(model, ids)).abs().max() <= 1e-4


def test_held_out_prompts_fall_back_to_the_built_in_set():
    from chattune.exporting.merge import held_out_conversations

    cfg = load_config(None, ["data.eval_ratio=0", "data.system=Be brief."])
    convs, source = held_out_conversations(cfg)
    assert source == "built-in prompts" and len(convs) >= 4
    assert all(c[0] == {"role": "system", "content": "Be brief."} and c[-1]["role"] == "user" for c in convs)
    cfg = load_config(None, ["data.eval_ratio=0.25", "data.size=12"])
    convs, source = held_out_conversations(cfg)
    assert source.startswith("the run's eval data") and len(convs) == 3


def test_gguf_writer_refuses_what_it_cannot_express(tokenizer):
    from types import SimpleNamespace

    from chattune.exporting.gguf_writer import GGUFExportError, check_supported

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(**{"model_type": "llama", **config}))

    check_supported(model(), tokenizer)
    check_supported(model(model_type="qwen2", attention_bias=True), tokenizer)  # Qwen2's q/k/v biases
    with pytest.raises(GGUFExportError, match="architectures llama, qwen2; this model is 'mistral'"):
        check_supported(model(model_type="mistral"), tokenizer)
    with pytest.raises(GGUFExportError, match="sliding_window"):
        check_supported(model(model_type="qwen2", use_sliding_window=True), tokenizer)
    with pytest.raises(GGUFExportError, match="rope type 'llama3'"):
        check_supported(model(rope_parameters={"rope_type": "llama3"}), tokenizer)
    with pytest.raises(GGUFExportError, match="biases"):
        check_supported(model(attention_bias=True), tokenizer)


@pytest.mark.slow
def test_gguf_tensors_match_llama_cpp_own_conversion_of_the_builtin_model():
    """The built-in model's HF weights are the dequantized tensors of a GGUF made by llama.cpp's
    converter; written back by chattune they must land under the same names, bit for bit."""
    import numpy as np
    from gguf import GGUFReader, dequantize
    from transformers import AutoModelForCausalLM

    from chattune.exporting.gguf_writer import _tensors
    from chattune.models import builtin_gguf_path, resolve_model

    reference = GGUFReader(builtin_gguf_path("smollm2-135m-instruct"))
    model = AutoModelForCausalLM.from_pretrained(resolve_model("builtin:smollm2-135m-instruct"), dtype=torch.float32)
    ours = {name: array for name, array, _ in _tensors(model, "f32")}
    assert {t.name for t in reference.tensors} == set(ours)
    # q/k rows are permuted for llama.cpp's rotary layout; v and the MLP are not.
    checked = [t for t in reference.tensors if t.name.startswith("blk.29.") and t.name.split(".")[2] in
               ("attn_q", "attn_k", "attn_v", "ffn_down")]
    assert len(checked) == 4
    for tensor in checked:
        expected = dequantize(tensor.data, tensor.tensor_type).reshape(ours[tensor.name].shape)
        assert np.array_equal(expected, ours[tensor.name]), tensor.name


@pytest.mark.slow  # two exports with their gates
def test_quantized_gguf_types_are_gated_on_kl_and_stored_quantized(tiny_run, tmp_path, monkeypatch):
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader

    from chattune.exporting.pipeline import KL_TOLERANCE, export_run, gguf_filename

    reports, sizes = {}, {}
    for dtype in ("q8_0", "q4_0"):
        out = tmp_path / dtype
        reports[dtype] = report = export_run(tiny_run, out, fmt="gguf", gguf_dtype=dtype, force=True,
                                             ollama=dtype == "q4_0")[-1]
        sizes[dtype] = (out / gguf_filename(dtype)).stat().st_size
        types = {t.name: t.tensor_type for t in GGUFReader(out / gguf_filename(dtype)).tensors}
        assert report.gate == "kl" and report.tolerance == KL_TOLERANCE[f"gguf-{dtype}"]
        assert types["blk.0.attn_q.weight"] == (Q.Q8_0 if dtype == "q8_0" else Q.Q4_0)
        assert types["token_embd.weight"] == Q.Q8_0 and types["blk.0.attn_norm.weight"] == Q.F32
        assert report.tokenizer_agreement == 1.0
    # 4.5 bits per block weight against 8.5: a smaller file that keeps less of the distribution
    assert sizes["q4_0"] < sizes["q8_0"] and 0 < reports["q8_0"].mean_kl < reports["q4_0"].mean_kl
    modelfile = (tmp_path / "q4_0" / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q4_0.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    # auto: smallest first; a tolerance between the two measured KLs refuses q4_0 and writes q8_0
    # (the types gguf-py makes; with llama.cpp installed the K-quants would come in between)
    from chattune.exporting import llamacpp

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    between = (reports["q8_0"].mean_kl * reports["q4_0"].mean_kl) ** 0.5
    report = export_run(tiny_run, tmp_path / "auto", fmt="gguf", tolerance=between, ollama=True)[-1]
    written = json.loads((tmp_path / "auto" / "export_report.json").read_text())
    assert written["type"] == "q8_0" and report.passed and report.mean_kl == pytest.approx(reports["q8_0"].mean_kl)
    assert [t["type"] for t in written["auto"]["refused"]] == ["q4_0"] and "fidelity gate failed" in written["auto"]["refused"][0]["refused"]
    assert sorted(p.name for p in (tmp_path / "auto").glob("*.gguf")) == ["model-q8_0.gguf"]
    assert (tmp_path / "auto" / "Modelfile").read_text().startswith("FROM ./model-q8_0.gguf\n")


def test_the_kl_gate_bounds_the_kl_not_the_logits():
    from chattune.exporting.fidelity import FidelityReport

    close = FidelityReport(max_logit_diff=3.0, greedy_agreement=0.5, prompts=2, tolerance=0.02, source="t",
                           mean_kl=0.01, gate="kl")
    far = FidelityReport(max_logit_diff=0.1, greedy_agreement=1.0, prompts=2, tolerance=0.02, source="t",
                         mean_kl=0.03, gate="kl")
    assert close.passed and not far.passed and "mean KL 0.03 nats (tolerance 0.02)" in far.describe()
    assert not FidelityReport(0.1, 1.0, 2, 0.02, "t", mean_kl=0.01, gate="kl", tokenizer_agreement=0.5).passed


@pytest.mark.slow  # conversion and read-back
def test_qwen2_gguf_round_trip_keeps_the_logits(builtin_tokenizer_dir, tmp_path):
    """Qwen2 (the seeds' Qwen1.5/Qwen2 family): q/k/v biases, HF's rotary order (no permutation)."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from chattune.exporting.gguf_writer import write_gguf
    from chattune.exporting.pipeline import load_gguf

    tok = AutoTokenizer.from_pretrained(builtin_tokenizer_dir)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, initializer_range=0.2, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.bias.normal_(0, 0.5)  # nonzero biases must survive the trip
    write_gguf(model, tok, tmp_path / "qwen2.gguf", "f32")
    reader = GGUFReader(tmp_path / "qwen2.gguf")
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert "blk.0.attn_q.bias" in {t.name for t in reader.tensors}
    loaded, _ = load_gguf(tmp_path, "qwen2.gguf")
    assert loaded.config.model_type == "qwen2"
    ids = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]])
    assert (_logits(loaded, ids) - _logits(model, ids)).abs().max() <= 1e-4


@pytest.mark.slow  # conversion and read-back
def test_a_sentencepiece_style_tokenizer_round_trips_through_gguf(tmp_path):
    """Llama-2 style vocabularies: written as llama.cpp's 'llama' (SentencePiece) vocab with scores and byte
    tokens; transformers' GGUF reader gives back the same ids for every text, bytes included."""
    from gguf import GGUFReader
    from transformers import LlamaConfig, LlamaForCausalLM

    from chattune.exporting.gguf_writer import tokenizer_kind, write_gguf
    from chattune.exporting.pipeline import load_gguf
    from gguf_helpers import sentencepiece_style_tokenizer

    tok = sentencepiece_style_tokenizer()
    assert tokenizer_kind(tok) == "llama"
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    write_gguf(model, tok, tmp_path / "spm.gguf", "f32")
    reader = GGUFReader(tmp_path / "spm.gguf")
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert types[tok.convert_tokens_to_ids("<0x41>")] == 6  # BYTE
    loaded, read_back = load_gguf(tmp_path, "spm.gguf")
    texts = ["The quick brown fox.", "Stocks fell after the lazy report", "天气很好", "emoji 🐟 and ünïcode", "  two  spaces"]
    for text in texts:
        assert read_back(text)["input_ids"] == tok(text)["input_ids"], text
    ids = torch.tensor([tok("The model learned its new name.")["input_ids"]])
    assert (_logits(loaded, ids) - _logits(model, ids)).abs().max() <= 1e-4


def test_a_tokenizer_llama_cpp_cannot_read_as_written_is_refused(tiny_model_dir):
    """WordPiece (or Unigram) has no GGUF form this writer makes: refused before any work, naming both kinds."""
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from chattune.exporting.gguf_writer import GGUFExportError, check_supported, tokenizer_kind

    wordpiece = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    assert tokenizer_kind(wordpiece) is None
    with pytest.raises(GGUFExportError, match="byte-level BPE.*SentencePiece-style"):
        check_supported(AutoModelForCausalLM.from_pretrained(tiny_model_dir), wordpiece)


def test_k_quants_need_llama_cpp_and_say_so_before_any_work(monkeypatch):
    from chattune.exporting import llamacpp
    from chattune.exporting.merge import ExportError
    from chattune.exporting.pipeline import check_gguf_type, gguf_types_here

    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(ExportError, match="llama-cpp-python"):
        check_gguf_type("q4_k_m")
    with pytest.raises(ExportError, match="q6_k"):
        check_gguf_type("q3_k")
    assert gguf_types_here() == ("q4_0", "q8_0", "f16", "f32")  # auto tries what can be made here
    monkeypatch.setattr(llamacpp, "available", lambda: True)
    assert gguf_types_here()[:4] == ("q4_0", "q4_k_m", "q5_k_m", "q6_k")


@pytest.mark.slow  # one q8_0 export with its gate
def test_gguf_export_holds_one_model_and_one_encoded_tensor_at_a_time(tiny_run, tmp_path,
                                                                     monkeypatch):
    """Memory, not timing: the writer keeps one encoded tensor alive at a time, and the merged
    model is freed before the file's loaded-back model exists (both at once: 3.2x the weights)."""
    import gc
    import weakref

    from chattune.exporting import gguf_writer, pipeline

    live, most, merged_refs, merged_alive_at_load = [], [], [], []
    encode, write, load = gguf_writer.encode_tensor, gguf_writer.write_gguf, pipeline.load_gguf

    def counting_encode(name, array, dtype):
        stored, kind = encode(name, array, dtype)
        if stored is not array:  # an f32 1-D tensor is written as it is (a view of the weight)
            live[:] = [ref for ref in live if ref() is not None]
            live.append(weakref.ref(stored))
            most.append(len(live))
        return stored, kind

    def remembering_write(model, *args, **kwargs):
        merged_refs.append(weakref.ref(model))  # the merged model the file is written from
        write(model, *args, **kwargs)

    def checking_load(folder, name):
        gc.collect()
        merged_alive_at_load.append(any(ref() is not None for ref in merged_refs))
        return load(folder, name)

    monkeypatch.setattr(gguf_writer, "encode_tensor", counting_encode)
    monkeypatch.setattr(gguf_writer, "write_gguf", remembering_write)
    monkeypatch.setattr(pipeline, "load_gguf", checking_load)
    out = tmp_path / "q8"
    report = pipeline.export_run(tiny_run, out, fmt="gguf", gguf_dtype="q8_0", force=True)[-1]
    assert report.gate == "kl" and report.prompts > 0
    assert most and max(most) == 1, "a second encoded tensor was alive while one was written"
    assert len(merged_refs) == 1
    assert merged_alive_at_load == [False], "the merged model existed when the file was loaded back"


def test_the_gguf_writer_puts_the_largest_tensors_first(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from chattune.exporting.gguf_writer import _tensors

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    written = list(_tensors(model, "q8_0"))
    sizes = [array.nbytes for _, array, _ in written]
    assert written[0][0] == "token_embd.weight" and sizes[0] == max(sizes)
    names = [name for name, _, _ in written]
    tied = bool(model.config.tie_word_embeddings)
    assert len(names) == len(set(names)) == len(model.state_dict()) - tied
