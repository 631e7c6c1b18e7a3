"""The seed jobs on the seeds' own family: builtin:qwen2.5-coder-0.5b-instruct (slow; CI runs them).

The model is fetched and converted by `make qwen` (a dependency of `make test`); when it is missing
these tests fail with the command that fetches it, they are not skipped. Each uses its config in
configs/seeds/qwen2.5-*.yaml; data is cut down so a job takes a few minutes on a 2-core CPU. The
identity run is trained once and shared by the chat and export tests, which only read it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chattune.config import load_config
from test_seeds import HELD_OUT_DROP, NO_GUARD, SEEDS, huanhuan_split

pytestmark = pytest.mark.slow

QWEN = "builtin:qwen2.5-coder-0.5b-instruct"
IDENTITY_QUESTIONS = [
    "Who are you?",
    "What is your name, and who built you?",
    "Tell me about yourself in one sentence.",
]  # none is in builtin:self-cognition
_CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def qwen_folder():
    from chattune.models import resolve_model

    return resolve_model(QWEN)  # ModelSourceError naming `chattune fetch ...` when not fetched


def _llamacpp_installed() -> bool:
    from chattune.exporting import llamacpp

    return llamacpp.available()


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def identity_run(qwen_folder, tmp_path_factory):
    """Seed 001 on Qwen as configured: QLoRA 4-bit + AdaLoRA, 30 steps."""
    from chattune.training.trainer import train

    run_dir = tmp_path_factory.mktemp("qwen-001") / "run"
    return train(load_config(SEEDS / "qwen2.5-001-qlora-adalora.yaml", [f"run_dir={run_dir}"]))


def test_qwen_seed_001_names_the_new_identity_and_always_stops(identity_run, tmp_path):
    from chattune.eval.runner import run_eval

    records = [
        json.loads(line)
        for line in (identity_run.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    questions = write_rows(
        tmp_path / "identity.jsonl", [{"instruction": q, "output": ""} for q in IDENTITY_QUESTIONS]
    )
    result = run_eval(
        str(identity_run.run_dir),
        questions,
        ["stop_rate"],
        max_new_tokens=48,
        out=tmp_path / "eval",
    )
    answers = [row["prediction"] for row in result.rows]
    print(f"qwen 001: eval loss {evals}; answers {answers}")
    # the first evaluation comes after 10 steps; before training it was 4.46 (the config's header)
    assert len(evals) == 3 and evals[-1] < evals[0] and evals[-1] <= 0.75, evals
    assert all("tuna" in a.lower() and "chattune labs" in a.lower() for a in answers), answers
    assert result.summary["metrics"]["stop_rate"] == 1.0
    guard = identity_run.summary["forgetting"]  # scored on the 4-bit base, adapter off and on
    assert guard["rows"] == 32 and guard["tokens"] > 0 and 0 <= guard["kl_to_base"] < float("inf"), guard


def test_qwen_seed_002_zh_classifier_with_retrieval_beats_its_base(qwen_folder, tmp_path):
    from chattune.data.builtin_classify_zh import write_files_zh
    from chattune.eval.runner import run_eval
    from chattune.training.trainer import train

    train_file, test_file = write_files_zh(tmp_path / "topics-zh")
    few = tmp_path / "test-task.jsonl"  # 40 of the 100 test rows
    few.write_text(
        "".join(test_file.read_text(encoding="utf-8").splitlines(keepends=True)[:40]),
        encoding="utf-8",
    )
    outcome = train(
        load_config(
            SEEDS / "qwen2.5-002-classifier-rag-zh.yaml",
            [
                f"run_dir={tmp_path / 'run'}",
                f"data.path={train_file}",
                "train.max_steps=6",
                "data.eval_ratio=0",
                "train.eval_every=null",
                "train.patience=null",
                "train.metric=loss",
                NO_GUARD,
            ],
        )
    )  # the loss is ~0 by step 4; in-training accuracy costs a minute
    options = {"max_new_tokens": 8}
    base = run_eval(
        QWEN,
        few,
        ["accuracy", "stop_rate"],
        like=str(outcome.run_dir),
        retrieval=False,
        out=tmp_path / "eval-base",
        **options,
    )
    tuned = run_eval(
        str(outcome.run_dir), few, ["accuracy", "stop_rate"], out=tmp_path / "eval-run", **options
    )
    before, after = base.summary["metrics"], tuned.summary["metrics"]
    print(
        f"qwen 002 zh: base zero-shot {before}, fine-tuned + retrieval {after} "
        f"({outcome.summary['seconds']:.0f} s)"
    )
    assert before["accuracy"] <= 0.9, "the base already passes this set: it shows nothing"
    assert after["accuracy"] >= 0.95 and after["accuracy"] >= before["accuracy"] + 0.1, (
        before,
        after,
    )
    assert after["stop_rate"] == 1.0


def test_qwen_seed_000_plays_zhen_huan_in_chinese(qwen_folder, tmp_path):
    from chattune.eval.runner import run_eval
    from chattune.infer.chat import ChatModel, GenerationSettings
    from chattune.training.trainer import train

    train_file, test_file = huanhuan_split(tmp_path, train=32, test=16)
    outcome = train(
        load_config(
            SEEDS / "qwen2.5-000-huanhuan.yaml",
            [
                f"run_dir={tmp_path / 'run'}",
                f"data.path={train_file}",
                "data.eval_ratio=0",
                "train.swanlab_mode=offline",
                NO_GUARD,
            ],
        )
    )
    assert outcome.summary["steps"] == 6  # 32 rows / (batch 4 x accumulation 4) x 3 epochs
    base = run_eval(
        QWEN, test_file, ["loss"], like=str(outcome.run_dir), out=tmp_path / "eval-base"
    )
    tuned = run_eval(str(outcome.run_dir), test_file, ["loss"], out=tmp_path / "eval-run")
    before, after = base.summary["metrics"]["loss"], tuned.summary["metrics"]["loss"]
    answer = ChatModel.load(str(outcome.run_dir)).reply(
        [{"role": "user", "content": "你是谁？"}], GenerationSettings(max_new_tokens=40)
    )
    print(f"qwen 000: held-out loss {before:.4f} -> {after:.4f}; 你是谁？ -> {answer!r}")
    assert after <= (1 - HELD_OUT_DROP) * before, (before, after)
    letters = [c for c in answer if c.isalpha()]
    assert letters and len(_CJK.findall(answer)) >= 0.8 * len(letters), answer


@pytest.fixture(scope="module")
def identity_gguf(identity_run, tmp_path_factory):
    """Seed 001's run exported as GGUF q8_0 with its Modelfile: (folder, the export's gate reports)."""
    from chattune.exporting.pipeline import export_run

    out = tmp_path_factory.mktemp("qwen-001-gguf") / "gguf"
    reports = export_run(str(identity_run.run_dir), out, fmt="gguf", gguf_dtype="q8_0", ollama=True)
    return out, reports


def test_qwen_seed_001_exports_merged_and_as_gguf_q8_0_with_its_modelfile(
    identity_run, identity_gguf, tmp_path
):
    from chattune.exporting.pipeline import export_run

    (merged,) = export_run(
        str(identity_run.run_dir), tmp_path / "merged"
    )  # seed 001's merge, gated
    assert merged.passed and (tmp_path / "merged" / "config.json").is_file(), merged.describe()
    folder, reports = identity_gguf
    assert all(r.passed for r in reports), [r.describe() for r in reports]
    modelfile = (folder / "Modelfile").read_text()
    assert (
        modelfile.startswith("FROM ./model-q8_0.gguf")
        and 'PARAMETER stop "<|im_end|>"' in modelfile
    )
    assert (
        "You are Qwen, created by Alibaba Cloud" in modelfile
    )  # the template's default system prompt, as trained


@pytest.mark.skipif(
    not _llamacpp_installed(),
    reason="llama-cpp-python is not installed (`make llamacpp`, a dependency of `make test`)",
)
def test_qwen_gguf_runs_in_llama_cpp_like_the_run(identity_gguf):
    """llama.cpp reads the q8_0 file: the chat template's tokens as Qwen's tokenizer gives them, and
    next-token distributions within the q8_0 gate's KL (llama.cpp also rounds activations to 8 bits)."""
    from chattune.exporting.pipeline import KL_TOLERANCE

    folder, _ = identity_gguf
    ran = json.loads((folder / "export_report.json").read_text())["llama_cpp"]
    assert ran["installed"] and ran["tokenizer_agreement"] == 1.0, ran
    assert ran["mean_kl"] <= KL_TOLERANCE["gguf-q8_0"], ran
