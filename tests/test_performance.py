"""Speed levers must not change the maths: packing, masked-logit skipping, bf16/fp32 choice."""

import pytest
import torch

from chattune.data.collate import PackCollator, PadCollator
from chattune.data.dataset import tokenize_conversations
from chattune.data.formats import Conversation
from chattune.data.templates import stop_token_ids

QUESTIONS = ["Who are you?", "What is two plus two?", "Name a colour.", "Say hi in French, please."]
ANSWERS = ["I am Tuna.", "Four.", "Blue, like the sea on a calm day.", "Bonjour !"]


@pytest.fixture(scope="module")
def examples(tokenizer):
    convs = [
        Conversation([{"role": "system", "content": "Be brief."}, {"role": "user", "content": q},
                      {"role": "assistant", "content": a}], f"t:{i}")
        for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS, strict=True))
    ]
    items, _ = tokenize_conversations(tokenizer, convs, 384, "truncate", stop_token_ids(tokenizer))
    assert len({len(e["input_ids"]) for e in items}) > 1, "examples of different lengths exercise padding"
    return items


@pytest.fixture(scope="module", params=["sdpa", "packed"])
def tiny_model(tiny_model_dir, request):
    """The tiny Llama with transformers' SDPA (dense packed mask) or chattune's per-example SDPA."""
    from transformers import AutoModelForCausalLM

    from chattune.model.attention import NAME, use_packed_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if request.param == "packed":
        assert use_packed_attention(model) and model.config._attn_implementation == NAME
    return model.eval()


def _summed_ce(model, ids, labels, **kwargs):
    """Summed shifted CE over labelled tokens; kwargs go to the model (position_ids, boundaries)."""
    logits = model(input_ids=ids, use_cache=False, **kwargs).logits.float()
    flat_logits, flat_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")


def _packed_inputs(batch):
    return {"ids": batch["input_ids"], **{k: v for k, v in batch.items() if k != "input_ids"}}


def test_pack_collator_layout(examples):
    batch = PackCollator()(examples)
    total = sum(len(e["input_ids"]) for e in examples)
    assert "attention_mask" not in batch, "an attention_mask would disable packed-sequence detection"
    starts = [0]
    for e in examples[:-1]:
        starts.append(starts[-1] + len(e["input_ids"]))
    assert batch["cu_seq_lens_q"].tolist() == [*starts, total]
    assert batch["input_ids"].shape == (1, total)
    assert (batch["position_ids"][0] == 0).nonzero().flatten().tolist() == starts
    assert all(batch["labels"][0, s] == -100 for s in starts)
    trained = sum(sum(label != -100 for label in e["labels"][1:]) for e in examples)
    assert int((batch["labels"] != -100).sum()) == trained


def test_packed_loss_equals_per_example_loss(tiny_model, examples):
    batch = PackCollator()(examples)
    with torch.no_grad():
        packed = _summed_ce(tiny_model, **_packed_inputs(batch))
        separate = sum(
            _summed_ce(tiny_model, torch.tensor([e["input_ids"]]), torch.tensor([e["labels"]])) for e in examples
        )
        padded_batch = PadCollator(0)(examples)
        padded = _summed_ce(tiny_model, padded_batch["input_ids"], padded_batch["labels"],
                            attention_mask=padded_batch["attention_mask"])
    count = int((batch["labels"] != -100).sum())
    assert abs(packed / count - separate / count) < 1e-4
    assert abs(padded / count - separate / count) < 1e-4


def test_packing_really_isolates_examples(tiny_model, examples):
    """Control: the same row with plain 0..N-1 positions (one long sequence) gives another loss."""
    batch = PackCollator()(examples)
    with torch.no_grad():
        packed = _summed_ce(tiny_model, **_packed_inputs(batch))
        joined = _summed_ce(tiny_model, batch["input_ids"], batch["labels"])
    assert abs(packed - joined) > 1e-3


@pytest.mark.parametrize("collator", ["pack", "pad"])
def test_masked_logit_loss_equals_standard_loss(tiny_model_dir, examples, collator):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from chattune.training.loss import masked_lm_loss

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.eval()
    batch = PackCollator()(examples) if collator == "pack" else PadCollator(0)(examples)
    count = int((batch["labels"][:, 1:] != -100).sum())
    ours = masked_lm_loss(model, batch, num_items_in_batch=torch.tensor(count))
    reference = model(**batch, use_cache=False).loss
    assert abs(ours.item() - reference.item()) < 1e-5
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference.backward()
    assert grads and all(torch.allclose(grads[n], p.grad, atol=1e-6) for n, p in model.named_parameters()
                         if p.grad is not None)


@pytest.mark.parametrize(("fast_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_precision_auto_follows_cpu_capability(monkeypatch, fast_bf16, expected):
    from chattune.model import load

    monkeypatch.setattr(load, "cpu_has_fast_bf16", lambda: fast_bf16)
    assert load.pick_precision("auto", "cpu") == expected
    assert load.pick_precision("fp32", "cpu") == "fp32"
    assert load.pick_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize(("fast_bf16", "fast_fp16", "precision", "device", "warns"), [
    (False, False, "bf16", "cpu", True), (False, False, "fp16", "cpu", True), (False, False, "fp32", "cpu", False),
    (True, False, "bf16", "cpu", False), (False, False, "bf16", "cuda", False),
    (True, False, "fp16", "cpu", True), (False, True, "fp16", "cpu", False), (False, True, "bf16", "cpu", True),
])
def test_forced_half_precision_on_a_cpu_without_it_warns(monkeypatch, fast_bf16, fast_fp16, precision, device, warns):
    """Each half format is judged by its own units: bf16 by AMX/AVX512-BF16, fp16 by AMX-FP16."""
    from chattune.model import load

    monkeypatch.setattr(load, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(load, "cpu_has_fast_fp16", lambda: fast_fp16)
    warning = load.slow_precision_warning(precision, device)
    assert (warning is not None) == warns
    if warns:
        assert f"train.precision={precision}" in warning and "fp32" in warning


def test_cpu_bf16_detection_reads_torch_flags(monkeypatch):
    from chattune.model import load

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert load.cpu_has_fast_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert load.cpu_has_fast_bf16() is True


def _first_step_loss(tiny_model_dir, tmp_path, name, extra):
    import json

    from chattune.config import load_config
    from chattune.training.trainer import train

    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={tmp_path / name}", "data.size=8", "train.max_steps=1",
        "train.batch_size=2", "train.grad_accum=2", "train.precision=fp32", "lora.dropout=0.0", *extra,
    ])
    outcome = train(cfg)
    records = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in records if "loss" in r), outcome.summary


def test_training_defaults_match_padded_standard_loss(tiny_model_dir, tmp_path):
    """Through the whole Trainer (grad accumulation included): the fast path logs the same loss."""
    fast, fast_summary = _first_step_loss(tiny_model_dir, tmp_path, "fast", [])
    plain, plain_summary = _first_step_loss(
        tiny_model_dir, tmp_path, "plain", ["train.packing=false", "train.skip_prompt_logits=false"]
    )
    assert abs(fast - plain) < 1e-4
    assert fast_summary["trained_tokens"] == plain_summary["trained_tokens"] > 0
    assert fast_summary["tokens"] == plain_summary["tokens"], "packed batches hold exactly the real tokens"
    assert fast_summary["precision"] == "fp32", "summary.json records the precision train.precision resolved to"


def test_lora_computes_in_autocast_dtype_without_changing_the_result(tiny_model_dir):
    """Under bf16 autocast the LoRA layers skip peft's fp32 input copy: same output, fp32 grads."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from chattune.training.speed import lora_in_autocast_dtype

    def build():
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)  # B starts at zero: make the adapter matter
        return model

    ids = torch.arange(3, 40).unsqueeze(0)
    results = []
    for switch in (False, True):
        model = build()
        if switch:
            assert lora_in_autocast_dtype(model, "fp32") == 0
            assert lora_in_autocast_dtype(model, "bf16") == 4  # 2 targets x 2 layers
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        grad = next(p.grad for n, p in model.named_parameters() if "lora_A" in n)
        assert grad.dtype == torch.float32 and grad.abs().sum() > 0
        results.append((loss.item(), grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-2)
    assert torch.allclose(results[0][1], results[1][1], rtol=0.1, atol=1e-3)
