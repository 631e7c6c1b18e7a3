"""Adapter methods on a tiny random Llama: config checks, each method trains and reloads, AdaLoRA's budget."""

import pytest
import torch

from chattune.config import ConfigError, load_config

IDS = torch.tensor([[1, 520, 1110, 3457, 28, 253, 5248, 2]])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora.method=adalora", "lora.init=pissa"], "adalora has its own initialisation"),
        (["lora.adalora_tinit=3"], "lora.adalora_tinit: AdaLoRA keys, used only with lora.method=adalora"),
        (["lora.method=adalora", "lora.adalora_target_r=16"], "adalora_target_r=16 exceeds lora.r=8"),
        (["model.quantize=4bit", "lora.init=pissa"], "lora.init=pissa rewrites the base weights"),
        (["model.quantize=8bit", "lora.init=olora"], "lora.init=olora rewrites the base weights"),
        (["lora.init=pissa_niter_0"], "pissa_niter_N"),
        (["lora.method=dora", "lora.init=olora"], "peft cannot convert such an adapter"),
        (["lora.init=loftq"], "use one of default, gaussian, pissa, olora"),
        (["lora.method=qlora"], "lora.method"),
        (["model.quantize=3bit"], "model.quantize"),
        (["model.quant_type=int4"], "model.quant_type"),
        (["train.optim=adam"], "paged_adamw_8bit"),
    ],
)
def test_impossible_combinations_are_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_valid_keys_round_trip_through_the_saved_config(tmp_path):
    cfg = load_config(None, [
        "lora.method=adalora", "lora.r=12", "lora.adalora_tinit=2", "model.quantize=4bit",
        "model.quant_type=fp4", "model.double_quant=false", "train.optim=paged_adamw_8bit",
    ])
    assert cfg.lora.final_rank() == 8  # 2/3 of the initial rank, peft's 12 -> 8
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert load_config(None, ["lora.init=pissa_niter_4", "lora.method=rslora"]).lora.init == "pissa_niter_4"


def _train(model_dir, run_dir, *extra):
    from chattune.training.trainer import train

    cfg = load_config(None, [
        f"model.name={model_dir}", f"run_dir={run_dir}", "name=t", "data.size=8", "train.max_steps=2",
        "train.batch_size=2", "train.grad_accum=1", "train.lr=1e-2", "train.precision=fp32", "lora.dropout=0.0",
        *extra,
    ])
    return train(cfg)


def _reloaded_logits(model_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize(
    ("method", "init"),
    [("lora", "gaussian"), ("rslora", "default"), ("dora", "default"), ("lora", "pissa"),
     ("rslora", "pissa_niter_2"), ("lora", "olora")],
)
def test_method_trains_and_its_adapter_reloads_on_the_original_base(varied_tiny_model_dir, tmp_path, method, init):
    """PiSSA/OLoRA train on W - BA; the saved adapter must still reproduce the run on the untouched base."""
    outcome = _train(varied_tiny_model_dir, tmp_path / "run", f"lora.method={method}", f"lora.init={init}")
    assert outcome.summary["steps"] == 2 and torch.isfinite(torch.tensor(outcome.summary["final_loss"]))
    model = outcome.model.eval()
    config = model.peft_config["default"]
    assert config.use_dora == (method == "dora") and config.use_rslora == (method == "rslora")
    with torch.no_grad():
        trained = model(input_ids=IDS).logits
    reloaded = _reloaded_logits(varied_tiny_model_dir, tmp_path / "run" / "adapter")
    assert torch.allclose(trained, reloaded, atol=1e-4), (trained - reloaded).abs().max()
    converted = init != "default" and init != "gaussian"
    assert (tmp_path / "run" / "init_adapter").is_dir() == converted
    if converted:  # peft's conversion: a plain LoRA adapter of rank 2r on the original weights
        import json

        saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
        assert saved["r"] == 16 and saved["init_lora_weights"] is True


def test_adalora_budget_shrinks_during_training(varied_tiny_model_dir, tmp_path):
    """chattune passes total_step and calls update_and_allocate each step: ranks end at the target budget."""
    outcome = _train(
        varied_tiny_model_dir, tmp_path / "run", "lora.method=adalora", "lora.r=6", "lora.adalora_target_r=2",
        "lora.adalora_tfinal=1", "train.max_steps=4",
    )
    model = outcome.model.eval()
    config = model.peft_config["default"]
    assert config.total_step == 4 and config.init_r == 6 and config.target_r == 2
    kept = [int(mask.sum()) if torch.is_tensor(mask) else sum(mask) for mask in config.rank_pattern.values()]
    assert len(kept) == 14  # 7 linear layers x 2 blocks
    assert sum(kept) == 2 * len(kept), "the final budget is target_r per layer on average"
    assert min(kept) < 6, "some ranks were pruned"
    lora_e = [p for n, p in model.named_parameters() if "lora_E" in n]
    assert sum(int((p != 0).sum()) for p in lora_e) == sum(kept), "pruned singular values are masked to zero"
    with torch.no_grad():
        trained = model(input_ids=IDS).logits
    reloaded = _reloaded_logits(varied_tiny_model_dir, tmp_path / "run" / "adapter")
    assert torch.allclose(trained, reloaded, atol=1e-4)


def test_adalora_logs_cross_entropy_apart_from_its_penalty(varied_tiny_model_dir, tmp_path, write_jsonl):
    """peft adds orth_reg_weight x penalty to the loss of a model given labels: chattune logs, evaluates
    and ranks the cross-entropy, and `chattune eval --metric loss` works on the reloaded AdaLoRA adapter."""
    import json
    import math
    import warnings

    from chattune.eval.runner import run_eval
    from chattune.model.adapters import ranks_pruned_to_zero
    from chattune.training.methods import adalora_orth_penalty

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = _train(
            varied_tiny_model_dir, tmp_path / "run", "lora.method=adalora", "lora.r=6", "lora.adalora_target_r=2",
            "lora.adalora_tfinal=1", "train.max_steps=4", "data.eval_ratio=0.25", "train.eval_every=2",
        )
    assert ranks_pruned_to_zero(outcome.model) > 0, "the budget pruned some module to rank 0"
    assert not [w for w in caught if "shards were not gathered" in str(w.message)]
    records = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 4 and all(r["adalora_penalty"] > 0 for r in steps)
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4]
    model = outcome.model.train()  # peft adds its penalty in any mode when labels are passed
    labels = IDS.clone()
    with torch.no_grad():
        with_penalty = float(model(input_ids=IDS, labels=labels).loss)
        logits = model(input_ids=IDS).logits
        cross_entropy = float(torch.nn.functional.cross_entropy(logits[0, :-1], IDS[0, 1:]))
        penalty = float(adalora_orth_penalty(model)) * model.peft_config["default"].orth_reg_weight
    assert with_penalty == pytest.approx(cross_entropy + penalty, rel=1e-5)
    assert penalty > 0.01, "the penalty the logged loss leaves out is not negligible"
    data = write_jsonl([{"instruction": "Who are you?", "output": "I am Tuna."}])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # peft's rank_pattern warning stays quiet
        result = run_eval(str(outcome.run_dir), data, ["loss"], out=tmp_path / "eval")
    assert math.isfinite(result.summary["metrics"]["loss"]) and result.summary["trained_tokens"] > 0


def test_adalora_schedule_too_long_for_the_run_fails_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    from chattune.training import trainer

    monkeypatch.setattr(trainer, "load_base_model", _must_not_load)
    with pytest.raises(ConfigError, match="run's 2 optimizer steps"):
        _train(tiny_model_dir, tmp_path / "run", "lora.method=adalora", "lora.adalora_tinit=2")


def test_total_optimizer_steps_matches_the_trainer():
    from chattune.training.methods import total_optimizer_steps

    cfg = load_config(None, ["train.batch_size=4", "train.grad_accum=4", "train.epochs=3"]).train
    assert total_optimizer_steps(cfg, 48, world_size=1) == 9  # 12 batches -> 3 steps/epoch
    assert total_optimizer_steps(cfg, 49, world_size=1) == 12  # 13 batches -> 4 steps/epoch
    cfg = load_config(None, ["train.max_steps=7"]).train
    assert total_optimizer_steps(cfg, 1000, world_size=1) == 7


def _must_not_load(*args, **kwargs):
    raise AssertionError("the model must not load")
