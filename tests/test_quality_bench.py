"""The quality bench's bookkeeping: its curve counts what was trained, its clock stops, its verdicts read right.

The bench itself (`make bench`) is not run here: benchmarks are not timed tests. What is
tested is what its figures rest on: the held-out curve's example and token counts equal the
run's own, the training-time budget stops training, time to target is the first point at or
below the target, and a rival that never reached it gives a lower-bound speedup.
"""

from __future__ import annotations

import math

from bench.quality import summarize, time_to_target, verdicts
from bench.quality_curve import HeldoutCurve

from chattune.config import load_config
from chattune.training.trainer import train


class CountingScorer:
    """Stands in for the scorer process: counts requests and returns a decreasing loss."""

    def __init__(self):
        self.calls = 0

    def score(self, model) -> float:
        assert any(p.requires_grad for p in model.parameters()), "scored a model without its adapter"
        self.calls += 1
        return 3.0 - 0.1 * self.calls


def tiny_cfg(tiny_model_dir, tmp_path, *extra):
    return load_config(None, [f"model.name={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", "data.size=16",
                              "train.batch_size=2", "train.grad_accum=2", "train.precision=fp32",
                              "train.device=cpu", "train.save_every=null", *extra])


def test_curve_counts_equal_the_runs_own(tiny_model_dir, tmp_path):
    scorer = CountingScorer()
    curve = HeldoutCurve(scorer, every_examples=4, budget_s=1e9)
    summary = train(tiny_cfg(tiny_model_dir, tmp_path, "train.epochs=2"), callbacks=(curve,)).summary
    last = curve.points[-1]
    assert last["step"] == summary["steps"] == 8
    assert last["examples"] == 32  # 16 rows x 2 epochs
    assert last["trained_tokens"] == summary["trained_tokens"]
    assert last["tokens"] == summary["tokens"]
    assert [p["examples"] for p in curve.points] == [4 * k for k in range(1, 9)]  # every 4 examples, once each
    assert scorer.calls == len(curve.points)
    seconds = [p["train_seconds"] for p in curve.points]
    # points carry train_seconds rounded to 0.01 s; the running total is exact
    assert seconds == sorted(seconds) and seconds[-1] <= round(curve.train_seconds, 2)


def test_budget_stops_training_after_the_step_that_passes_it(tiny_model_dir, tmp_path):
    curve = HeldoutCurve(CountingScorer(), every_examples=1000, budget_s=0.0)
    summary = train(tiny_cfg(tiny_model_dir, tmp_path, "train.epochs=2"), callbacks=(curve,)).summary
    assert summary["steps"] == 1
    assert [p["step"] for p in curve.points] == [1]  # scored once at the stop, not again at the end


def test_time_to_target_is_the_first_point_at_or_below_it():
    points = [{"train_seconds": 0.0, "heldout_loss": 3.1}, {"train_seconds": 5.0, "heldout_loss": 3.0},
              {"train_seconds": 9.0, "heldout_loss": 2.9}]
    assert time_to_target(points, 3.0) == 5.0
    assert time_to_target(points, 2.95) == 9.0
    assert time_to_target(points, 2.0) is None


def run(name, seed, finals, seconds, rss):
    points = [{"train_seconds": 0.0, "heldout_loss": 3.2}, *[{"train_seconds": s, "heldout_loss": f}
                                                             for s, f in zip(seconds, finals, strict=True)]]
    return {"name": name, "seed": seed, "precision": "fp32", "points": points, "final_loss": finals[-1],
            "train_seconds": seconds[-1], "peak_rss_mb": rss}


def test_verdicts_ratios_and_lower_bound():
    runs = [run("recipe", 0, [3.10], [100.0], 4000), run("recipe", 1, [3.12], [110.0], 4200),
            run("trl", 0, [3.15], [120.0], 6000),
            run("chattune", 0, [3.05, 2.9], [10.0, 100.0], 2000), run("chattune", 1, [3.2, 3.0], [10.0, 20.0], 2100)]
    target = (3.10 + 3.12) / 2
    out = verdicts(summarize(runs, target))
    # recipe: seed 0 reached 3.11 at 100 s, seed 1 never (counts its 110 s); chattune: 10 and 20 s
    assert out["speedup_vs_recipe"] == round(105.0 / 15.0, 2) and out["speedup_vs_recipe_is_lower_bound"]
    assert out["speedup_vs_trl"] == round(120.0 / 15.0, 2) and out["speedup_vs_trl_is_lower_bound"]
    assert math.isclose(out["recipe_final_mean_plus_2sd"], round(3.11 + 2 * 0.014142, 5), abs_tol=1e-5)
    assert out["chattune_final_within"] is True
    assert out["rss_vs_recipe"] == round(2050 / 4100, 3)


def curve(losses):
    return [{"examples": 16 * i, "heldout_loss": loss} for i, loss in enumerate(losses)]


def test_precision_gap_compares_fp32_with_the_bf16_seed_range():
    from bench.quality import precision_gap

    contenders = {"chattune": {"curves": [curve([3.2, 3.00, 2.90]), curve([3.2, 3.02, 2.94])]},
                  "chattune-fp32": {"curves": [curve([3.2, 3.01, 2.95])]}}
    gap = precision_gap(contenders)
    assert [p["examples"] for p in gap["points"]] == [16, 32]  # the shared step-0 base point is left out
    assert gap["points"][0] == {"examples": 16, "gap": 0.0, "bf16_seed_range": 0.02}
    assert gap["points"][1]["gap"] == 0.03 and gap["max_abs_gap"] == 0.03
    assert gap["points"][1]["bf16_seed_range"] == 0.04
    assert gap["every_gap_within_seed_range"] is True
    contenders["chattune-fp32"]["curves"] = [curve([3.2, 3.05, 2.95])]  # 0.04 above the mean at 32, range 0.02
    assert precision_gap(contenders)["every_gap_within_seed_range"] is False
