"""`python -m bench retrieval` (`make bench-retrieval`): seed 002 with retrieval, English and Chinese.

Part 1, the retrievers (no training): on the built-in topic set and the Chinese set in seed 002's
shape, the share of test texts whose 3 nearest training rows vote their label (kNN accuracy),
index build time and time per query, for BM25 over chattune's terms (words, CJK characters and
character pairs), BM25 over plain words (a CJK run is one word), BM25 over CJK characters only,
and the built-in model's mean-pooled last hidden states (cosine, exact search).
Part 2, the classifier: trains configs/seeds/002-classifier-rag(-zh).yaml and the same config
without retrieval, then scores base zero-shot, base + retrieval, fine-tuned, fine-tuned +
retrieval (`chattune eval --retrieval-ablation`) and the plain fine-tune on the 100 test rows.
Writes bench/results/<date>-retrieval.json; not a test, nothing is timed against a bound.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import traceback
from collections import Counter
from datetime import datetime
from pathlib import Path

from bench.common import REPO, save_report

SETS = {"en": ("chattune.data.builtin_classify", "002-classifier-rag.yaml"),
        "zh": ("chattune.data.builtin_classify_zh", "002-classifier-rag-zh.yaml")}


def write_set(lang: str, folder: Path) -> tuple[Path, Path]:
    if lang == "en":
        from chattune.data.builtin_classify import write_files

        _, train, _, test = write_files(folder)
    else:
        from chattune.data.builtin_classify_zh import write_files_zh

        train, test = write_files_zh(folder)
    return train, test


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def words_only(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def cjk_chars(text: str) -> list[str]:
    from chattune.data.retrieval import bm25_terms

    return [t for t in bm25_terms(text) if len(t) == 1 or t.isascii()]


def bm25_knn(train: list[dict], test: list[dict], terms, k: int = 3) -> dict:
    import bm25s
    import numpy as np

    started = time.perf_counter()
    index = bm25s.BM25()
    index.index([terms(r["text"]) for r in train], show_progress=False)
    built = time.perf_counter() - started
    started, hits = time.perf_counter(), 0
    for row in test:
        scores = index.get_scores(terms(row["text"]) or [""])
        best = np.argsort(-scores, kind="stable")[:k]
        hits += Counter(train[i]["output"] for i in best).most_common(1)[0][0] == row["output"]
    return {"knn_accuracy": hits / len(test), "build_ms": round(built * 1000, 1),
            "query_ms": round((time.perf_counter() - started) / len(test) * 1000, 3)}


def hidden_state_knn(train: list[dict], test: list[dict], k: int = 3) -> dict:
    import torch

    from chattune.config import ModelConfig
    from chattune.model.load import load_base_model, load_tokenizer

    cfg = ModelConfig()
    tokenizer, model = load_tokenizer(cfg), load_base_model(cfg, dtype=torch.float32, device="cpu")

    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt")
                hidden = model(**ids, output_hidden_states=True).hidden_states[-1][0]
                out.append(torch.nn.functional.normalize(hidden.mean(0), dim=0))
        return torch.stack(out)

    started = time.perf_counter()
    corpus = embed([r["text"] for r in train])
    built = time.perf_counter() - started
    started = time.perf_counter()
    queries = embed([r["text"] for r in test])
    best = (queries @ corpus.T).topk(k, dim=1).indices
    hits = sum(Counter(train[int(i)]["output"] for i in best[n]).most_common(1)[0][0] == row["output"]
               for n, row in enumerate(test))
    return {"knn_accuracy": hits / len(test), "build_ms": round(built * 1000, 1),
            "query_ms": round((time.perf_counter() - started) / len(test) * 1000, 3)}


def retrievers(train_file: Path, test_file: Path) -> dict:
    from chattune.data.retrieval import bm25_terms

    train, test = rows(train_file), rows(test_file)
    return {"bm25 chattune terms (default)": bm25_knn(train, test, bm25_terms),
            "bm25 words only": bm25_knn(train, test, words_only),
            "bm25 CJK characters only": bm25_knn(train, test, cjk_chars),
            "base model hidden states": hidden_state_knn(train, test)}


def classifier(lang: str, train_file: Path, test_file: Path, work: Path) -> dict:
    from chattune.config import load_config
    from chattune.eval.ablation import retrieval_ablation
    from chattune.eval.runner import run_eval
    from chattune.training.trainer import train

    config = REPO / "configs" / "seeds" / SETS[lang][1]
    base = [f"data.path={train_file}"]
    started = time.perf_counter()
    rag = train(load_config(config, [*base, f"run_dir={work / f'{lang}-rag'}"]))
    rag_seconds = time.perf_counter() - started
    table = retrieval_ablation(str(rag.run_dir), test_file, ["accuracy", "stop_rate"], max_new_tokens=8)
    plain = train(load_config(config, [*base, f"run_dir={work / f'{lang}-plain'}", "data.retrieval="]))
    scored = run_eval(str(plain.run_dir), test_file, ["accuracy", "stop_rate"], max_new_tokens=8)
    table["variants"].append({"name": "fine-tuned without retrieval (trained and scored)", "retrieval": False,
                              "metrics": scored.summary["metrics"],
                              "generate_seconds": scored.summary["generate_seconds"],
                              "prompt_tokens_mean": scored.summary["prompt_tokens_mean"]})
    table["train_seconds"] = {"rag": round(rag_seconds, 1), "plain": plain.summary.get("seconds")}
    table["train_tokens"] = {"rag": rag.summary.get("tokens"), "plain": plain.summary.get("tokens")}
    return table


def markdown(report: dict) -> str:
    lines = []
    for lang, part in report["sets"].items():
        lines += [f"**{lang}** retrievers (kNN, k=3, {part['test_rows']} test rows)", "",
                  "| retriever | kNN accuracy | index build (ms) | per query (ms) |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {r['knn_accuracy']:.2f} | {r['build_ms']} | {r['query_ms']} |"
                  for name, r in part["retrievers"].items()]
        if "classifier" in part:
            lines += ["", f"**{lang}** classifier accuracy", "",
                      "| model | accuracy | stop rate | prompt tokens | generate s |", "| --- | ---: | ---: | ---: | ---: |"]
            lines += [f"| {v['name']} | {v['metrics']['accuracy']:.2f} | {v['metrics'].get('stop_rate', 0):.2f} | "
                      f"{v['prompt_tokens_mean']} | {v['generate_seconds']} |" for v in part["classifier"]["variants"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from bench.__main__ import machine

    parser = argparse.ArgumentParser(prog="python -m bench retrieval", description=__doc__.splitlines()[0])
    parser.add_argument("--no-train", action="store_true", help="part 1 only (the retrievers)")
    parser.add_argument("--langs", nargs="*", default=list(SETS), choices=list(SETS))
    args = parser.parse_args(argv)
    report = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine(), "sets": {}}
    with tempfile.TemporaryDirectory(prefix="chattune-rag-") as tmp:
        work = Path(tmp)
        for lang in args.langs:
            train_file, test_file = write_set(lang, work / lang)
            part = {"test_rows": len(rows(test_file)), "retrievers": retrievers(train_file, test_file)}
            if not args.no_train:
                try:  # one set failing keeps the other's results
                    part["classifier"] = classifier(lang, train_file, test_file, work)
                except Exception as err:  # noqa: BLE001 - reported in the results and on stderr
                    traceback.print_exc()
                    part["classifier_error"] = repr(err)
            report["sets"][lang] = part
    path = save_report(report, "retrieval")
    print(markdown(report))
    print(f"wrote {path}")
    return 0
