"""Measure how closely an exported model reproduces base + adapter on held-out prompts.

Two numbers: the max |logit difference| over every position of the held-out conversations
(teacher-forced), and the share of prompts whose short greedy continuation is identical.
The reference (base + adapter) is measured once and kept, so the merge can happen in place
afterwards. A bf16/fp16 model is measured computing in fp32 (each module's weights upcast
only while it runs), so the numbers are the merge's rounding, not low-precision arithmetic,
and memory stays one model in its own dtype. This module does not merge or write anything.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass, field

from chattune.data.templates import render

CHUNK_ELEMENTS = 1 << 24  # weights of one linear layer upcast to fp32 at a time (64 MB) while measuring

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
    mean_kl: float = 0.0  # mean KL(reference || export) of next-token distributions, nats per position
    gate: str = "logits"  # "logits": max |logit diff| <= tolerance and greedy agreement 100%; "kl": mean_kl <= tolerance

    @property
    def passed(self) -> bool:
        tokens_ok = self.tokenizer_agreement in (None, 1.0)
        if self.gate == "kl":  # a quantized file changes logits by design; its distributions must stay close
            return self.mean_kl <= self.tolerance and tokens_ok
        return self.max_logit_diff <= self.tolerance and self.greedy_agreement == 1.0 and tokens_ok

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def describe(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        logits = f"max |logit diff| {self.max_logit_diff:.3g}"
        kl = f"mean KL {self.mean_kl:.3g} nats"
        measured = f"{kl} (tolerance {self.tolerance:g}), {logits}" if self.gate == "kl" else \
            f"{logits} (tolerance {self.tolerance:g}), {kl}"
        return (
            f"fidelity {verdict}: {measured}, "
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
    """Teacher-forced logits on each full text and greedy ids from each prompt (computed in fp32).

    Each kind runs as one padded batch: a bf16 model's weights are upcast once per forward pass, so
    batching the 6 prompts cut the gate's passes from ~150 to ~25 (on a 1.1B bf16 model on 2 CPU cores,
    one prompt at a time took over 5 minutes). Every row's result is cut to its own length, and the
    reference and the export are measured the same way.
    """
    import torch

    with torch.inference_mode(), computing_in_fp32(model):
        ids, mask = _padded(full_ids, pad_id, left=False)
        out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float().cpu()
        logits = [out[row, : t.shape[1]].clone() for row, t in enumerate(full_ids)]  # not views of the padding
        del out
        ids, mask = _padded(prompt_ids, pad_id, left=True)
        generated = model.generate(
            input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=False,
            max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids), pad_token_id=pad_id,
        )[:, ids.shape[1]:].tolist()
    return Outputs(logits, [_through_first_stop(row, stop_ids) for row in generated])


def _padded(rows: list, pad_id: int, left: bool):
    """[n, longest] ids and attention mask from [1, length] id tensors, padded on the left or right."""
    import torch

    longest = max(t.shape[1] for t in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for row, t in enumerate(rows):
        span = slice(longest - t.shape[1], longest) if left else slice(0, t.shape[1])
        ids[row, span], mask[row, span] = t[0], 1
    return ids, mask


def _through_first_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """A batch row's continuation as generating it alone gives it: up to and including its first stop token."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: i + 1]
    return tokens


@contextlib.contextmanager
def computing_in_fp32(model):
    """Run every module of a bf16/fp16 `model` in fp32: its own weights are upcast (exactly) just
    before it runs and put back after, so at most one module's fp32 copy exists at a time.

    Two modules are handled without a whole fp32 copy of their weight, which on a 1.1B model
    (bench/scale.py) would add 400 MB each to the export's peak: an embedding looks up in its
    own dtype and hands back fp32 (the same values), and a linear layer of more than
    CHUNK_ELEMENTS weights (the LM head) multiplies in fp32 one slice of output rows at a time.
    """
    import torch

    handles, replaced = [], []
    for module in model.modules():
        own = [t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))
               if t.is_floating_point() and t.dtype != torch.float32]
        if not own:
            continue
        if isinstance(module, torch.nn.Embedding):
            handles.append(module.register_forward_hook(lambda _m, _a, out: out.float()))
        elif isinstance(module, torch.nn.Linear) and module.weight.numel() > CHUNK_ELEMENTS:
            module.forward = functools.partial(_linear_in_fp32_slices, module)
            replaced.append(module)
        else:
            saved = {}
            handles.append(module.register_forward_pre_hook(lambda _m, _a, own=own, saved=saved: _upcast(own, saved)))
            handles.append(module.register_forward_hook(lambda _m, _a, _o, own=own, saved=saved: _restore(own, saved)))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for module in replaced:
            del module.forward


def _linear_in_fp32_slices(module, x):
    """module(x) computed in fp32, CHUNK_ELEMENTS weights (a slice of output rows) upcast at a time,
    each slice's result written into one preallocated output (no second copy of the logits)."""
    import torch

    weight, bias = module.weight, module.bias
    rows = max(1, CHUNK_ELEMENTS // weight.shape[1])
    x = x.float()
    out = x.new_empty((*x.shape[:-1], weight.shape[0]))
    for i in range(0, weight.shape[0], rows):
        piece = None if bias is None else bias[i:i + rows].float()
        out[..., i:i + rows] = torch.nn.functional.linear(x, weight[i:i + rows].float(), piece)
    return out


def _upcast(tensors, saved: dict) -> None:
    for tensor in tensors:
        saved[id(tensor)] = tensor.data
        tensor.data = tensor.data.float()


def _restore(tensors, saved: dict) -> None:
    for tensor in tensors:
        tensor.data = saved.pop(id(tensor))


def compare(reference: Outputs, candidate: Outputs, tolerance: float, source: str, gate: str = "logits") -> FidelityReport:
    """The report of `candidate` against `reference`; `gate` says which number `tolerance` bounds."""
    import torch

    max_diff, kl_sum, positions = 0.0, 0.0, 0
    for ref, cand in zip(reference.logits, candidate.logits, strict=True):
        if ref.shape != cand.shape:
            raise ValueError(f"logit shapes differ: {tuple(ref.shape)} vs {tuple(cand.shape)}")
        max_diff = max(max_diff, float((ref - cand).abs().max()))
        log_p, log_q = torch.log_softmax(ref.double(), -1), torch.log_softmax(cand.double(), -1)
        kl_sum += float((log_p.exp() * (log_p - log_q)).sum())
        positions += ref.shape[0]
    mismatched = [i for i, (a, b) in enumerate(zip(reference.greedy, candidate.greedy, strict=True)) if a != b]
    prompts = len(reference.greedy)
    agreement = (prompts - len(mismatched)) / prompts if prompts else 0.0
    return FidelityReport(max_diff, agreement, prompts, tolerance, source, mismatched,
                          mean_kl=kl_sum / max(positions, 1), gate=gate)
