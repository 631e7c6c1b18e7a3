"""The CUDA paths of the speed levers: bf16 autocast, packing with per-example attention, 4-bit QLoRA.

Marked `gpu`: they run where CUDA is (`pytest -m gpu` on the GPU machine) and are reported as
skipped, with the reason, elsewhere (tests/conftest.py). Tolerances come from the dtypes, as in
tests/test_precision_paths.py: bf16 keeps 8 significant bits per rounding stage; fp32 sums of a
few thousand reordered terms stay within ~1e3 x 2^-24 relative.
"""

from __future__ import annotations

import json

import pytest

from chattune.config import load_config

pytestmark = pytest.mark.gpu

BF16_UNIT_ROUNDOFF = 2.0**-8
BF16_STAGES = 8  # embedding, 2 x (attention, MLP), final norm, LM head, plus one (tests/test_precision_paths.py)
FP32_REORDERED = 1e3 * 2.0**-24


def _train(model_dir, run_dir, *extra):
    from chattune.training.trainer import train

    return train(load_config(None, [
        f"model.name={model_dir}", f"run_dir={run_dir}", "data.size=16", "train.max_steps=6", "train.batch_size=4",
        "train.grad_accum=1", "train.lr=1e-2", "lora.dropout=0.0", "train.device=cuda", "train.forgetting=false",
        *extra,
    ]))


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_bf16_autocast_on_cuda_learns_like_fp32(varied_tiny_model_dir, tmp_path):
    runs = {p: _train(varied_tiny_model_dir, tmp_path / p, f"train.precision={p}") for p in ("bf16", "fp32")}
    assert runs["bf16"].summary["precision"] == "bf16"
    curves = {p: _losses(o.run_dir) for p, o in runs.items()}
    tolerance = BF16_STAGES * BF16_UNIT_ROUNDOFF
    for bf16, fp32 in zip(curves["bf16"], curves["fp32"], strict=True):
        assert abs(bf16 - fp32) <= tolerance * fp32, curves
    assert curves["fp32"][-1] < curves["fp32"][0] * (1 - 2 * tolerance), "the runs learned"


def test_packing_on_cuda_trains_like_padding(varied_tiny_model_dir, tmp_path):
    """Packed rows (per-example attention: flash-attention varlen when installed, else SDPA) and padded
    batches give the same fp32 loss curve on CUDA."""
    curves = {packing: _losses(_train(varied_tiny_model_dir, tmp_path / str(packing), "train.precision=fp32",
                                      f"train.packing={str(packing).lower()}").run_dir) for packing in (True, False)}
    for packed, padded in zip(curves[True], curves[False], strict=True):
        assert abs(packed - padded) <= 10 * FP32_REORDERED * padded, curves


def test_qlora_4bit_on_cuda_trains_and_reloads(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    import torch

    from chattune.infer.chat import ChatModel

    outcome = _train(tiny_model_dir, tmp_path / "q", "model.quantize=4bit", "train.precision=bf16")
    losses = _losses(outcome.run_dir)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    chat = ChatModel.load(str(outcome.run_dir), device="cuda")
    assert next(chat.model.parameters()).device.type == "cuda"
    assert chat.reply([{"role": "user", "content": "Hi"}]) is not None


def test_a_bf16_run_loads_onto_cuda_in_bf16_within_bf16_rounding_of_fp32(varied_tiny_model_dir, tmp_path):
    """Issue 15: chat / eval / serve load a CUDA bf16 run in bf16 (fp32 on a GPU without bf16), every weight
    on the GPU, its logits within BF16_STAGES unit roundoffs of the logit scale of an fp32 load; a plain
    model loads as pick_precision says (bf16, or fp16 on older GPUs)."""
    import torch

    from chattune.infer.chat import ChatModel

    outcome = _train(varied_tiny_model_dir, tmp_path / "bf16", "train.precision=bf16")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    ids = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]], device="cuda")
    logits = {}
    for dtype in ("auto", "fp32"):
        model = ChatModel.load(str(outcome.run_dir), device="cuda", dtype=dtype).model
        assert {p.device.type for p in model.parameters()} == {"cuda"}
        base_dtype = model.get_base_model().get_input_embeddings().weight.dtype
        assert base_dtype == (expected if dtype == "auto" else torch.float32)
        with torch.no_grad():
            logits[dtype] = model(input_ids=ids).logits.float()
    tolerance = BF16_STAGES * BF16_UNIT_ROUNDOFF * float(logits["fp32"].abs().max())
    assert float((logits["auto"] - logits["fp32"]).abs().max()) <= tolerance
    plain = ChatModel.load(str(varied_tiny_model_dir), device="cuda").model
    assert next(plain.parameters()).dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
