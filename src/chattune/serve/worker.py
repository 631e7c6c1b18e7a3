"""Run generations one at a time on a single thread and stream their text back to asyncio.

Requests are queued; the worker thread takes one job, activates its model's adapter under
the registry's lock, generates, and pushes text pieces onto the job's asyncio queue. A job
whose client went away is skipped if still queued, and stops at the next token if running
(a StoppingCriteria checks its cancel flag). Stop strings are cut from the text, OpenAI style.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

from chattune.infer.chat import GenerationSettings

# HF fast tokenizers are not safe to call from two threads at once (the server tokenizes
# prompts on the event loop while the worker decodes), so both take this lock.
TOKENIZER_LOCK = threading.Lock()


@dataclass
class Job:
    name: str
    prompt_ids: list[int]
    settings: GenerationSettings
    stop: list[str]
    seed: int | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0

    def emit(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class WorkerStats:
    finished: int = 0
    cancelled: int = 0
    refused: int = 0  # requests turned away with 503 because max_queue were waiting
    cancelled_tokens: deque = field(default_factory=lambda: deque(maxlen=64))  # tokens made before each stop


class StopText:
    """Incremental decoding that withholds text which might still become a stop string."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.ids: list[int] = []
        self.sent = 0
        self.hit = False

    def add(self, token_ids: list[int]) -> str:
        self.ids += token_ids
        text = self._decode()
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            return self._take(text[:cut])
        if text.endswith("\ufffd"):  # half a multi-byte character
            return ""
        hold = max((len(s) - 1 for s in self.stop), default=0)
        return self._take(text[: len(text) - hold] if hold else text)

    def flush(self) -> str:
        if self.hit:
            return ""
        return self._take(self._decode())

    def _decode(self) -> str:
        with TOKENIZER_LOCK:
            return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def _take(self, text: str) -> str:
        piece = text[self.sent:] if len(text) > self.sent else ""
        self.sent = max(self.sent, len(text))
        return piece


DEFAULT_MAX_QUEUE = 256  # waiting requests; beyond it new ones get 503 instead of waiting without bound


class Worker:
    def __init__(self, registry, max_queue: int = DEFAULT_MAX_QUEUE):
        self.registry, self.max_queue = registry, max_queue
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.stats = WorkerStats()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the generation thread (again, if an earlier lifespan stopped it)."""
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._run, name="chattune-generate", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join(timeout=30)

    def submit(self, job: Job) -> bool:
        """Queue `job`; False (not queued) when max_queue requests are already waiting."""
        if self.jobs.qsize() >= self.max_queue:  # only the event loop submits: no race between submitters
            self.stats.refused += 1
            return False
        self.jobs.put(job)
        return True

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                self._count_cancel(job)
                continue
            try:
                finish = self._generate(job)
            except Exception as err:  # reported to that one client; the worker keeps serving
                job.emit("error", f"{type(err).__name__}: {err}")
                continue
            if job.cancelled.is_set():
                self._count_cancel(job)
            else:
                self.stats.finished += 1
            job.emit("done", finish, job.completion_tokens)

    def _count_cancel(self, job: Job) -> None:
        self.stats.cancelled += 1
        self.stats.cancelled_tokens.append(job.completion_tokens)

    def _generate(self, job: Job) -> str:
        import torch

        with self.registry.activate(job.name) as item:
            chat = item.chat
            text = StopText(chat.tokenizer, job.stop)
            streamer = _Streamer(job, text, set(chat.stop_ids))
            kwargs = {
                "input_ids": torch.tensor([job.prompt_ids], device=chat.model.device),
                "attention_mask": torch.ones(1, len(job.prompt_ids), dtype=torch.long, device=chat.model.device),
                **job.settings.kwargs(),
                "eos_token_id": sorted(chat.stop_ids),
                "pad_token_id": chat.tokenizer.pad_token_id,
                "streamer": streamer,
                "stopping_criteria": _stopping([lambda: job.cancelled.is_set() or text.hit]),
            }
            if job.seed is not None:
                torch.manual_seed(job.seed)
            with torch.inference_mode():
                chat.model.generate(**kwargs)
        if piece := text.flush():
            job.emit("text", piece)
        if text.hit or streamer.ended_on_stop_token:
            return "stop"
        return "length" if job.completion_tokens >= job.settings.max_new_tokens else "stop"


class _Streamer:
    """transformers streamer protocol: put(ids) per step (the prompt first), end() at the end."""

    def __init__(self, job: Job, text: StopText, stop_ids: set[int]):
        self.job, self.text, self.stop_ids = job, text, stop_ids
        self.seen_prompt = False
        self.ended_on_stop_token = False

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        ids = [int(i) for i in value.reshape(-1).tolist()]
        self.job.completion_tokens += len(ids)
        self.ended_on_stop_token = ids[-1] in self.stop_ids
        if not self.text.hit and (piece := self.text.add(ids)):
            self.job.emit("text", piece)

    def end(self) -> None:
        pass


def _stopping(checks):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Flag(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            stop = any(check() for check in checks)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Flag()])
