"""Shard-by-shard export on a tiny Llama saved in several shards: equal to peft's whole-model merge,
sharded output that loads, dtype kept or overridden, one shard in memory, fallbacks named."""

import json
import math
import shutil
import weakref

import pytest
import torch

from chattune.cli import main
from chattune.config import load_config
from chattune.exporting import shards

U32 = 2.0**-24  # fp32 unit roundoff
IDS = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]])


def _save_sharded(source, out, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(dtype)
    model.save_pretrained(out, max_shard_size="2MB")  # embeddings and head alone, the layers together
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    assert len(list(out.glob("model-*-of-*.safetensors"))) >= 2 and (out / shards.INDEX).is_file()
    return out


@pytest.fixture(scope="module")
def sharded_base(varied_tiny_model_dir, tmp_path_factory):
    return _save_sharded(varied_tiny_model_dir, tmp_path_factory.mktemp("sharded") / "fp32", torch.float32)


def _run(base, run_dir, *extra):
    from adapter_helpers import strengthen_adapter
    from chattune.training.trainer import train

    train(load_config(None, [
        f"model.name={base}", f"run_dir={run_dir}", "name=s", "data.size=8", "data.eval_ratio=0.25",
        "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1", "train.precision=fp32",
        "lora.dropout=0.0", *extra,
    ]))
    strengthen_adapter(run_dir)  # non-zero B, so every delta matters
    return run_dir


@pytest.fixture(scope="module")
def lora_run(sharded_base, tmp_path_factory):
    return _run(sharded_base, tmp_path_factory.mktemp("runs") / "lora")


@pytest.fixture(scope="module")
def bf16_run(lora_run, sharded_base, tmp_path_factory):
    """lora_run's adapter on the same base stored in bf16 (config.yaml points at the bf16 copy)."""
    base = _save_sharded(sharded_base, tmp_path_factory.mktemp("sharded") / "bf16", torch.bfloat16)
    run_dir = tmp_path_factory.mktemp("runs") / "bf16"
    shutil.copytree(lora_run, run_dir)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace(str(sharded_base), str(base)))
    return run_dir


def _peft_merged(base, adapter, dtype):
    """Reference: the whole base loaded in `dtype`, peft's merge_and_unload, its state dict."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict()


def _stored(folder):
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def _bound(plan, key, merged):
    """Twice (ours and peft's) the fp32 rounding of W + (B @ A) * s: r products summed (gamma_r) and the
    add; DoRA also a row norm over `in` terms, a division and a product (each ~1 ulp of the result)."""
    delta = plan.deltas[key]
    r, n = delta.a.shape
    lora = (delta.b.abs() @ delta.a.abs()) * abs(delta.scaling) * (r * U32 / (1 - r * U32))
    if delta.magnitude is None:
        return 2 * (lora + U32 * merged.abs())
    factor = (delta.magnitude.abs() / torch.linalg.norm(merged, dim=1).clamp_min(1e-30)).view(-1, 1)
    return 2 * (factor * lora + (n + 4) * U32 * merged.abs()) * 2


@pytest.mark.parametrize("method", ["lora", "rslora", "dora"])
def test_shard_merge_equals_peft_whole_model_merge(sharded_base, lora_run, tmp_path, method):
    run = lora_run if method == "lora" else _run(sharded_base, tmp_path / "run", f"lora.method={method}")
    plan = shards.plan_merge(str(sharded_base), None, run / "adapter")
    assert len(plan.shards) >= 3 and plan.deltas and plan.dtype == torch.float32
    assert all((d.magnitude is not None) == (method == "dora") for d in plan.deltas.values())
    settings = json.loads((run / "adapter" / "adapter_config.json").read_text())
    r = settings["r"]
    scaling = settings["lora_alpha"] / (math.sqrt(r) if method == "rslora" else r)
    assert {d.scaling for d in plan.deltas.values()} == {scaling}
    (tmp_path / "out").mkdir()
    shards.merge_shards(plan, tmp_path / "out")
    ours, reference = _stored(tmp_path / "out"), _peft_merged(sharded_base, run / "adapter", torch.float32)
    base = _stored(sharded_base)
    assert ours.keys() == base.keys() and set(ours) <= set(reference)
    for key, tensor in ours.items():
        if key in plan.deltas:
            assert not torch.equal(tensor, base[key]), key
            assert ((tensor - reference[key]).abs() <= _bound(plan, key, reference[key])).all(), key
        else:
            assert torch.equal(tensor, base[key]), key  # untouched tensors are copied bit for bit


def test_sharded_export_loads_and_matches_base_plus_adapter(lora_run, sharded_base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert main(["export", str(lora_run), "--out", str(out)]) == 0
    index = json.loads((out / shards.INDEX).read_text())
    base_index = json.loads((sharded_base / shards.INDEX).read_text())
    assert index["weight_map"] == base_index["weight_map"]  # same shards, same names
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in _stored(out).values())
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(set(index["weight_map"].values()))
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert (out / "chat_template.jinja").read_text() == (lora_run / "chat_template.jinja").read_text()
    report = json.loads((out / "export_report.json").read_text())
    assert report["merge"]["path"] == "shards" and report["merged"]["passed"]
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(sharded_base, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(lora_run / "adapter")).eval()
    with torch.inference_mode():
        assert (merged(input_ids=IDS).logits - reference(input_ids=IDS).logits).abs().max() <= 1e-4
    assert not list(tmp_path.glob(".merged*")), "no temporary folder left behind"


def test_output_dtype_follows_the_base_and_dtype_overrides(bf16_run, tmp_path):
    from safetensors import safe_open

    from chattune.exporting.pipeline import shard_plan

    plan, _ = shard_plan(bf16_run)
    assert plan.dtype == torch.bfloat16
    for flags, dtype, name in [([], torch.bfloat16, "BF16"), (["--dtype", "fp32"], torch.float32, "F32")]:
        out = tmp_path / name
        assert main(["export", str(bf16_run), "--out", str(out), *flags]) == 0
        for file in out.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as tensors:
                keys = tensors.keys()
                assert {tensors.get_slice(k).get_dtype() for k in keys} == {name}, file.name
        assert json.loads((out / "config.json").read_text())["dtype"] == str(dtype)[6:]
        report = json.loads((out / "export_report.json").read_text())
        assert report["merged"]["passed"] and report["merge"]["path"] == "shards", report
        ours, base = _stored(out), _stored(plan.folder)
        for key, delta in plan.deltas.items():  # the delta in fp32 on the exact bf16 weight, rounded once
            exact = base[key].float() + (delta.b @ delta.a) * delta.scaling
            ulp = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-23
            assert ((ours[key].float() - exact).abs() <= ulp * exact.abs() + 1e-30).all(), key
    reference = _peft_merged(plan.folder, bf16_run / "adapter", torch.bfloat16)
    ours = _stored(tmp_path / "BF16")
    for key in plan.deltas:  # peft's merge into the bf16 base rounds the same sum: at most one bf16 ulp apart
        diff = (ours[key].float() - reference[key].float()).abs()
        assert (diff <= 2.0**-7 * reference[key].float().abs()).all(), key


def test_a_bf16_export_refused_by_the_gate_points_at_fp32(bf16_run, tmp_path, capsys):
    """bf16 rounds W + dW (tiny model: max |logit diff| ~0.13); past --tolerance the refusal says why."""
    out = tmp_path / "strict"
    assert main(["export", str(bf16_run), "--out", str(out), "--tolerance", "1e-3"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "fidelity gate failed" in err and "--dtype fp32 keeps them" in err and not out.exists()
    assert main(["export", str(bf16_run), "--out", str(out), "--tolerance", "1e-3", "--dtype", "fp32"]) == 0


def test_at_most_one_shard_is_held_at_a_time(lora_run, sharded_base, tmp_path, monkeypatch):
    """Every tensor read from a shard is freed before the next shard is read (weak references)."""
    read, alive_at_read = shards.read_shard, []
    earlier: list = []

    def spying_read(path):
        alive_at_read.append(sum(ref() is not None for ref in earlier))
        tensors, metadata = read(path)
        earlier.extend(weakref.ref(t) for t in tensors.values())
        return tensors, metadata

    monkeypatch.setattr(shards, "read_shard", spying_read)
    plan = shards.plan_merge(str(sharded_base), None, lora_run / "adapter")
    (tmp_path / "out").mkdir()
    shards.merge_shards(plan, tmp_path / "out")
    assert len(alive_at_read) == len(plan.shards) >= 3
    assert alive_at_read == [0] * len(plan.shards)
    assert sum(ref() is not None for ref in earlier) == 0


def test_tied_embeddings_stay_tied(tiny_model_dir, lora_run, tmp_path):
    """The tied tiny model has no lm_head.weight in its shards; the merged output loads tied."""
    from transformers import AutoModelForCausalLM

    from chattune.exporting.pipeline import tied_modules

    base = _save_sharded(tiny_model_dir, tmp_path / "tied", torch.float32)
    assert tied_modules(load_config(None, [f"model.name={base}"]).model) == {"model.embed_tokens", "lm_head"}
    assert "lm_head.weight" not in _stored(base)
    plan = shards.plan_merge(str(base), None, lora_run / "adapter", tied_modules(load_config(
        None, [f"model.name={base}"]).model))
    (tmp_path / "out").mkdir()
    shards.merge_shards(plan, tmp_path / "out")
    shutil.copy(base / "config.json", tmp_path / "out")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    assert torch.equal(merged.model.embed_tokens.weight, _stored(base)["model.embed_tokens.weight"])
    with pytest.raises(shards.NotShardable, match="tied embeddings"):
        shards.plan_merge(str(base), None, lora_run / "adapter", frozenset({"model.layers.0.mlp.down_proj"}))


def test_adalora_falls_back_to_the_whole_model_merge(sharded_base, tmp_path):
    from chattune.exporting.pipeline import shard_plan

    run = _run(sharded_base, tmp_path / "run", "lora.method=adalora", "lora.r=4", "lora.adalora_target_r=2")
    plan, reason = shard_plan(run)
    assert plan is None and "ADALORA" in reason
    out = tmp_path / "merged"
    assert main(["export", str(run), "--out", str(out)]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert report["merge"] == {"path": "whole model", "reason": reason} and report["merged"]["passed"]


def test_qlora_and_unknown_adapter_tensors_take_the_whole_model_path(lora_run, tmp_path):
    from chattune.exporting.pipeline import shard_plan

    run = tmp_path / "q"
    shutil.copytree(lora_run, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("quantize: none", "quantize: 4bit"))
    plan, reason = shard_plan(run)
    assert plan is None and "QLoRA" in reason
    adapter = tmp_path / "a"
    shutil.copytree(lora_run / "adapter", adapter)
    settings = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**settings, "lora_bias": True}))
    with pytest.raises(shards.NotShardable, match="lora_bias"):
        shards.read_adapter(adapter)


def test_quantized_or_non_float_base_weights_are_not_merged_shard_by_shard(lora_run, sharded_base, tmp_path):
    from safetensors.torch import save_file

    base = tmp_path / "int8"
    shutil.copytree(sharded_base, base)
    settings = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**settings, "quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(shards.NotShardable, match="quantized"):
        shards.plan_merge(str(base), None, lora_run / "adapter")
    (base / "config.json").write_text(json.dumps(settings))
    tensors = _stored(sharded_base)
    tensors["model.layers.0.mlp.down_proj.weight"] = tensors["model.layers.0.mlp.down_proj.weight"].to(torch.int8)
    for file in base.glob("*.safetensors*"):
        file.unlink()
    save_file(tensors, str(base / shards.SINGLE), metadata={"format": "pt"})
    with pytest.raises(shards.NotShardable, match="down_proj.weight as I8, not a plain float"):
        shards.plan_merge(str(base), None, lora_run / "adapter")


def test_the_gate_computes_a_bf16_model_in_fp32_exactly(bf16_run, sharded_base):
    """computing_in_fp32 gives the logits of the model's exact fp32 copy, and leaves its weights bf16."""
    from transformers import AutoModelForCausalLM

    from chattune.exporting.fidelity import computing_in_fp32
    from chattune.exporting.pipeline import shard_plan

    folder = shard_plan(bf16_run)[0].folder
    low = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    exact = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        with computing_in_fp32(low):
            upcast = low(input_ids=IDS).logits
        assert upcast.dtype == torch.float32 and torch.equal(upcast, exact(input_ids=IDS).logits)
        assert not torch.equal(low(input_ids=IDS).logits.float(), upcast), "bf16 arithmetic differs"
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}


def test_the_gate_multiplies_large_layers_in_fp32_slices(bf16_run, sharded_base, monkeypatch):
    """Linear layers over fidelity.CHUNK_ELEMENTS weights (the LM head of a real model) are computed one
    slice of output rows at a time; only the summation blocking can differ from the whole fp32 copy, so
    the logits agree to fp32 rounding (64 terms per dot product here: 64 x 2^-24 relative, with margin)."""
    from transformers import AutoModelForCausalLM

    from chattune.exporting import fidelity
    from chattune.exporting.pipeline import shard_plan

    monkeypatch.setattr(fidelity, "CHUNK_ELEMENTS", 1000)  # every linear layer of the tiny model goes by slices
    folder = shard_plan(bf16_run)[0].folder
    low = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    exact = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    sliced = [m for m in low.modules() if isinstance(m, torch.nn.Linear)]
    with torch.inference_mode():
        with fidelity.computing_in_fp32(low):
            assert all("forward" in vars(m) for m in sliced)
            upcast = low(input_ids=IDS).logits
        reference = exact(input_ids=IDS).logits
    scale = float(reference.abs().max())
    torch.testing.assert_close(upcast, reference, rtol=0, atol=16 * 64 * 2**-24 * scale)
    assert not any("forward" in vars(m) for m in sliced)  # the modules' own forward is back
