"""Measure how closely an exported model reproduces base + adapter on held-out prompts.

Two numbers: the max |logit difference| over every position of the held-out conversations
(teacher-forced), and the share of prompts whose short greedy continuation is identical.
The reference (base + adapter) is measured once and kept, so the merge can happen in place
afterwards. This module does not merge or write anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from chattune.data.templates import render

MAX_TOKENS_PER_TEXT = 256  # keeps stored reference logits small (positions x vocab floats)

BUILTIN_PROMPTS = [
    "Who are you?",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a linked list is in one sentence.",
    "Give me three tips for sleeping better.",
    "Translate 'good morning' into Spanish.",
]


@dataclass
class Outputs:
    """What one model produced on the held-out set: logits per text and greedy ids per prompt."""

    logits: list  # one [positions, vocab] float tensor per conversation
    greedy: list[list[int]]


@dataclass
class FidelityReport:
    max_logit_diff: float
    greedy_agreement: float  # share of prompts with identical greedy ids
    prompts: int
    tolerance: float
    source: str  # where the held-out prompts came from
    mismatched: list[int] = field(default_factory=list)  # indexes of disagreeing prompts
    tokenizer_agreement: float | None = None  # GGUF only: share of texts tokenized identically

    @property
    def passed(self) -> bool:
        tokens_ok = self.tokenizer_agreement in (None, 1.0)
        return self.max_logit_diff <= self.tolerance and self.greedy_agreement == 1.0 and tokens_ok

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"fidelity {verdict}: max |logit diff| {self.max_logit_diff:.3g} (tolerance {self.tolerance:g}), "
            f"greedy agreement {self.greedy_agreement:.0%} on {self.prompts} prompts from {self.source}"
            + ("" if self.tokenizer_agreement is None else f", tokenizer agreement {self.tokenizer_agreement:.0%}")
        )


def builtin_conversations() -> list[list[dict]]:
    return [[{"role": "user", "content": text}] for text in BUILTIN_PROMPTS]


def encode_texts(tokenizer, conversations: list[list[dict]]) -> tuple[list, list]:
    """(full conversation ids, prompt ids) per conversation; a final answer is cut from the prompt."""
    import torch

    full, prompts = [], []
    for messages in conversations:
        has_answer = messages[-1]["role"] == "assistant"
        prompt_messages = messages[:-1] if has_answer else messages
        full_text = render(tokenizer, messages, add_generation_prompt=not has_answer)
        prompt_text = render(tokenizer, prompt_messages, add_generation_prompt=True)
        full.append(torch.tensor([tokenizer.encode(full_text, add_special_tokens=False)[:MAX_TOKENS_PER_TEXT]]))
        prompts.append(torch.tensor([tokenizer.encode(prompt_text, add_special_tokens=False)[:MAX_TOKENS_PER_TEXT]]))
    return full, prompts


def tokenizer_agreement(reference_tok, candidate_tok, conversations: list[list[dict]]) -> float:
    """Share of rendered conversations that both tokenizers turn into the same ids."""
    same = 0
    for messages in conversations:
        text = render(reference_tok, messages, add_generation_prompt=messages[-1]["role"] != "assistant")
        same += reference_tok.encode(text, add_special_tokens=False) == candidate_tok.encode(text, add_special_tokens=False)
    return same / len(conversations) if conversations else 0.0


def measure(model, full_ids: list, prompt_ids: list, stop_ids: set[int], pad_id: int,
            max_new_tokens: int = 24) -> Outputs:
    """Teacher-forced logits on each full text and greedy ids from each prompt (fp32, CPU)."""
    import torch

    logits, greedy = [], []
    with torch.inference_mode():
        for ids in full_ids:
            ids = ids.to(model.device)
            logits.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].float().cpu())
        for ids in prompt_ids:
            ids = ids.to(model.device)
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids), pad_token_id=pad_id,
            )
            greedy.append(out[0, ids.shape[1]:].tolist())
    return Outputs(logits, greedy)


def compare(reference: Outputs, candidate: Outputs, tolerance: float, source: str) -> FidelityReport:
    max_diff = 0.0
    for ref, cand in zip(reference.logits, candidate.logits, strict=True):
        if ref.shape != cand.shape:
            raise ValueError(f"logit shapes differ: {tuple(ref.shape)} vs {tuple(cand.shape)}")
        max_diff = max(max_diff, float((ref - cand).abs().max()))
    mismatched = [i for i, (a, b) in enumerate(zip(reference.greedy, candidate.greedy, strict=True)) if a != b]
    prompts = len(reference.greedy)
    agreement = (prompts - len(mismatched)) / prompts if prompts else 0.0
    return FidelityReport(max_diff, agreement, prompts, tolerance, source, mismatched)
