"""data.template=chatml on a base whose vocabulary lacks <|im_start|>/<|im_end|> (issue 33 item 2).

The tokenizer is the built-in SmolLM2 one with its two ChatML markers renamed and no chat template
(a real byte-level BPE vocabulary without them); the model a tiny random Llama on it. One short run
learns a one-word answer, so chat from the run dir can be seen to stop on the added <|im_end|>.
"""

from __future__ import annotations

import json

import pytest
import torch

from chattune import rundir
from chattune.config import load_config

MARKERS = ("<|im_start|>", "<|im_end|>")
ROWS = [{"messages": [{"role": "user", "content": "Who are you?"},
                      {"role": "assistant", "content": "Tuna"}]}]


def markerless_tokenizer(builtin_tokenizer_dir, out):
    """The built-in tokenizer with <|im_start|>/<|im_end|> renamed away, EOS <|endoftext|>, no
    chat template."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    builtin = AutoTokenizer.from_pretrained(builtin_tokenizer_dir)
    data = json.loads(builtin.backend_tokenizer.to_str())
    renamed = {"<|im_start|>": "<|reserved_1|>", "<|im_end|>": "<|reserved_2|>"}
    for token in data["added_tokens"]:
        token["content"] = renamed.get(token["content"], token["content"])
    data["model"]["vocab"] = {renamed.get(k, k): v for k, v in data["model"]["vocab"].items()}
    end = "<|endoftext|>"
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), bos_token=end,
                            eos_token=end, unk_token=end).save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def tiny_base(tokenizer, out, tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=tied, initializer_range=0.2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def markerless_dir(builtin_tokenizer_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("markerless")
    tokenizer = markerless_tokenizer(builtin_tokenizer_dir, folder / "tokenizer")
    assert len(tokenizer.encode("<|im_end|>", add_special_tokens=False)) > 1
    assert not tokenizer.chat_template
    return tiny_base(tokenizer, folder / "untied", tied=False)


@pytest.fixture(scope="module")
def marker_run(markerless_dir, tmp_path_factory):
    """A run that learns the answer "Tuna" under chatml; (run dir, the in-memory trained model)."""
    from chattune.training.trainer import train

    work = tmp_path_factory.mktemp("marker-run")
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 8), encoding="utf-8")
    cfg = load_config(None, [
        f"model.name={markerless_dir}", f"run_dir={work / 'run'}", "name=markers",
        f"data.path={data}",
        "data.template=chatml", "data.eval_ratio=0", "train.max_steps=30", "train.batch_size=4",
        "train.grad_accum=1", "train.precision=fp32", "train.lr=0.02", "train.warmup_ratio=0",
        "lora.dropout=0.0", "train.tracking=none",
    ])
    outcome = train(cfg)
    return outcome.run_dir, outcome.model


def test_lint_reports_the_added_markers_once_and_refuses_nothing(markerless_dir, write_jsonl):
    from chattune.data.lint import lint_data
    from chattune.model.load import open_tokenizer

    cfg = load_config(None, [f"data.path={write_jsonl(ROWS * 5)}", "data.template=chatml"])
    report = lint_data(cfg.data, open_tokenizer(str(markerless_dir)), cfg.seed).report
    assert not report.errors
    notes = [line for line in report.summary_lines() if "not in the tokenizer's vocabulary" in line]
    assert len(notes) == 1 and all(m in notes[0] for m in MARKERS)
    assert "added as special tokens" in report.template


def test_run_grows_the_vocabulary_and_trains_only_the_new_rows(marker_run, markerless_dir):
    from safetensors import safe_open

    run_dir, model = marker_run
    tokenizer = rundir.run_tokenizer(rundir.open_run_dir(run_dir))
    base_rows = len(markerless_tokenizer_of(markerless_dir))
    new_ids = tokenizer.convert_tokens_to_ids(list(MARKERS))
    assert len(tokenizer) == base_rows + 2 and new_ids == [base_rows, base_rows + 1]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    config = json.loads((run_dir / rundir.ADAPTER / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"model.embed_tokens": new_ids, "lm_head": new_ids}
    with safe_open(str(run_dir / rundir.ADAPTER / "adapter_model.safetensors"), "pt") as saved:
        names = saved.keys()  # safe_open is not iterable itself
        deltas = {k: saved.get_tensor(k) for k in names if "trainable_tokens_delta" in k}
        assert not [k for k in names if k.endswith(("embed_tokens.weight", "lm_head.weight"))]
    assert len(deltas) == 2 and all(tuple(t.shape) == (2, 64) for t in deltas.values())
    for name, module in model.named_modules():  # each trained row moved from where it started
        if name.endswith("token_adapter"):
            start = module.trainable_tokens_original["default"]
            trained = module.trainable_tokens_delta["default"]
            assert (trained.detach() - start).abs().max() > 1e-3, name


def markerless_tokenizer_of(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_chat_from_the_run_dir_stops_on_the_added_end_of_turn(marker_run):
    from chattune.infer.chat import ChatModel
    from chattune.model.generate import generate_batch

    chat = ChatModel.load(str(marker_run[0]))
    end = chat.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in chat.stop_ids
    assert chat.model.get_base_model().config.vocab_size == len(chat.tokenizer)
    prompt = ROWS[0]["messages"][:1]
    [reply] = generate_batch(chat.model, chat.tokenizer, [prompt], chat.stop_ids, 8)
    assert reply.stopped and reply.text == "Tuna"


def test_merge_gguf_and_modelfile_carry_the_markers(marker_run, tmp_path):
    import gguf
    from gguf import GGUFReader

    from chattune.exporting.pipeline import export_run, gguf_filename

    run_dir = marker_run[0]
    reports = export_run(run_dir, tmp_path / "hf")
    assert all(r.passed for r in reports)
    merged = json.loads((tmp_path / "hf" / "config.json").read_text())
    tokenizer = rundir.run_tokenizer(rundir.open_run_dir(run_dir))
    assert merged["vocab_size"] == len(tokenizer)
    out = tmp_path / "gguf"
    reports = export_run(run_dir, out, fmt="gguf", gguf_dtype="f32", ollama=True)
    assert reports[-1].passed and reports[-1].greedy_agreement == 1.0
    fields = GGUFReader(out / gguf_filename("f32")).fields
    names, kinds = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    tokens = [bytes(names.parts[i]).decode() for i in names.data]
    types = [int(kinds.parts[i][0]) for i in kinds.data]
    for marker in MARKERS:
        index = tokenizer.convert_tokens_to_ids(marker)
        assert tokens[index] == marker and types[index] == gguf.TokenType.CONTROL
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.ggml.eos_token_id"].contents() == end
    assert 'PARAMETER stop "<|im_end|>"' in (out / "Modelfile").read_text()


def test_tied_head_follows_the_embedding_rows(builtin_tokenizer_dir, tmp_path):
    """A tied model: only the embedding is named; peft ties the head to the same trained rows."""
    from chattune.data.named_templates import apply_template, choose_template
    from chattune.model.adapters import attach_lora
    from chattune.model.load import load_base_model, open_tokenizer
    from chattune.model.vocab import grow_for_tokenizer

    plain = markerless_tokenizer(builtin_tokenizer_dir, tmp_path / "tok")
    folder = tiny_base(plain, tmp_path / "tied", tied=True)
    tokenizer = open_tokenizer(str(folder))
    apply_template(tokenizer, choose_template(tokenizer, "chatml"))
    cfg = load_config(None, [f"model.name={folder}"])
    base = load_base_model(cfg.model)
    ids = grow_for_tokenizer(base, tokenizer)
    model = attach_lora(base, cfg.lora, new_token_ids=ids)
    assert model.peft_config["default"].trainable_token_indices == {"model.embed_tokens": ids}
    adapter = model.get_base_model().model.embed_tokens.token_adapter
    with torch.no_grad():
        adapter.trainable_tokens_delta["default"].add_(1.0)
    hidden = torch.randn(1, 1, 64)
    head = model.get_base_model().lm_head(hidden)[0, 0, ids]
    rows = adapter.trainable_tokens_delta["default"]
    assert torch.allclose(head, (hidden[0, 0] @ rows.T).detach(), atol=1e-5)
