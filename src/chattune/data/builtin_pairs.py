"""The built-in preference set `builtin:identity-pairs`: the new identity's answer chosen over the base model's.

Built from builtin:self-cognition's questions and answer templates: `chosen` fills an answer with
data.name / data.author, `rejected` fills the same answer with the identity the built-in base model
states about itself (BASE_NAME / BASE_AUTHOR: SmolLM2's own system prompt, "a helpful AI assistant
named SmolLM, trained by Hugging Face"). So the pair differs only in who the assistant says it is.
Training pairs use the training questions; `python -m chattune.data.builtin_pairs DIR` also writes
held-out pairs on HELD_OUT_QUESTIONS (never trained on) for `chattune eval --metric preference`.
It does not tokenize.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from chattune.data.builtin import HELD_OUT_QUESTIONS, TOPICS
from chattune.data.preference import PreferenceRow

SOURCE = "builtin:identity-pairs"
BASE_NAME, BASE_AUTHOR = "SmolLM", "Hugging Face"


def _answer(template: str, name: str, author: str) -> str:
    text = template.format(name=name, author=author)
    return text[:1].upper() + text[1:]


def _pair(question: str, template: str, name: str, author: str, system: str | None, source: str) -> PreferenceRow:
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return PreferenceRow(prompt, source, chosen=_answer(template, name, author),
                         rejected=_answer(template, BASE_NAME, BASE_AUTHOR))


def identity_pairs(name: str, author: str, system: str | None = None, seed: int = 0) -> list[PreferenceRow]:
    """Every training question once, with an answer template drawn per question (seeded)."""
    rng = random.Random(seed)
    rows = []
    for questions, answers in TOPICS.values():
        for question in questions:
            rows.append(_pair(question, rng.choice(answers), name, author, system, f"{SOURCE}#{len(rows)}"))
    return rows


def held_out_pairs(name: str, author: str, system: str | None = None) -> list[PreferenceRow]:
    """HELD_OUT_QUESTIONS x every answer template: questions no training pair asks."""
    templates = [t for _, answers in TOPICS.values() for t in answers]
    return [_pair(q, t, name, author, system, f"{SOURCE}:held-out#{i}")
            for i, (q, t) in enumerate((q, t) for q in HELD_OUT_QUESTIONS for t in templates)]


def write_jsonl(rows: list[PreferenceRow], path: Path) -> Path:
    """Rows in the prompt/chosen/rejected form (prompt as messages), written whole then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps({"prompt": row.prompt, "chosen": row.chosen, "rejected": row.rejected},
                                 ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chattune.data.builtin_pairs", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--name", default="Chattune Assistant")
    parser.add_argument("--author", default="the chattune team")
    args = parser.parse_args(argv)
    for split, rows in (("train", identity_pairs(args.name, args.author)),
                        ("test", held_out_pairs(args.name, args.author))):
        print(f"{write_jsonl(rows, args.folder / f'{split}-pairs.jsonl')}: {len(rows)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
