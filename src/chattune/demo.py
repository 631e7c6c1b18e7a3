"""The demo: fine-tune the built-in model on builtin:self-cognition, then compare answers.

Prints the base model's and the fine-tuned model's answers to held-out identity questions
(never seen in training) side by side, and whether each answer names the new identity.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from chattune.config import load_config
from chattune.data.builtin import HELD_OUT_QUESTIONS


def mentions_identity(answer: str, name: str, author: str) -> bool:
    text = answer.lower()
    return name.lower() in text or author.lower() in text


def compare_answers(run_path, questions: list[str], max_new_tokens: int = 60) -> list[dict]:
    """Answer each question with the adapter off (base) and on (fine-tuned), greedily."""
    from chattune.infer.chat import ChatModel, GenerationSettings

    chat = ChatModel.load(str(run_path))
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    rows = []
    for question in questions:
        messages = [{"role": "user", "content": question}]
        with chat.model.disable_adapter():
            base = chat.reply(messages, settings)
        tuned = chat.reply(messages, settings)
        rows.append({"question": question, "base": base, "tuned": tuned})
    return rows


def run_demo(config_path: str | None, overrides: list[str]) -> int:
    from chattune.training.trainer import train

    console = Console()
    started = time.perf_counter()
    cfg = load_config(config_path, overrides)
    run_path = train(cfg, console).run_dir
    rows = compare_answers(run_path, HELD_OUT_QUESTIONS)
    table = Table(title=f"Held-out identity questions (new identity: {cfg.data.name} by {cfg.data.author})",
                  show_lines=True)
    table.add_column("question", ratio=1)
    table.add_column("base model", ratio=2)
    table.add_column("fine-tuned", ratio=2)
    hits = 0
    for row in rows:
        ok = mentions_identity(row["tuned"], cfg.data.name, cfg.data.author)
        hits += ok
        table.add_row(row["question"], row["base"], ("[green]✓[/] " if ok else "[red]✗[/] ") + row["tuned"])
    console.print(table)
    console.print(f"fine-tuned answers naming the new identity: {hits}/{len(rows)}")
    console.print(f"run dir: {run_path}  (chat with it: chattune chat {run_path})")
    console.print(f"demo wall time: {time.perf_counter() - started:.0f} s")
    return 0 if hits == len(rows) else 1
