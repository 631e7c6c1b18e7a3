"""Talk to a model: load a run dir (base + adapter) or a plain model, generate or stream replies.

A run dir carries everything needed: its config names the base model, its tokenizer folder
holds the chat template used in training, its adapter folder the LoRA weights.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from chattune import rundir
from chattune.config import ModelConfig
from chattune.data.templates import TemplateError, prompt_ids, stop_token_ids, with_system


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def kwargs(self) -> dict:
        sampled = self.temperature > 0
        out = {"max_new_tokens": self.max_new_tokens, "do_sample": sampled}
        if sampled:
            out.update(temperature=self.temperature, top_p=self.top_p)
        if self.repetition_penalty != 1.0:
            out["repetition_penalty"] = self.repetition_penalty
        return out


@dataclass
class ChatModel:
    model: object
    tokenizer: object
    system: str | None = None
    stop_ids: set[int] = field(default_factory=set)
    row_spec: object = None  # data.formats.RowSpec: how a run reads a row (predict's dict rows)

    @classmethod
    def load(cls, target: str, device: str = "cpu", dtype: str = "auto") -> ChatModel:
        """`target` is a run dir (rundir.load_for_inference), or anything models.resolve_model accepts;
        `dtype` is --dtype (auto: model.load.inference_precision)."""
        from chattune.model.load import inference_dtype, load_base_model, load_tokenizer

        if rundir.is_run_dir(target):
            loaded = rundir.load_for_inference(target, device=device, dtype=dtype)
            model, tokenizer, system = loaded.model, loaded.tokenizer, loaded.cfg.data.system
        else:
            model_cfg = ModelConfig(name=target)
            tokenizer = load_tokenizer(model_cfg)
            model = load_base_model(model_cfg, dtype=inference_dtype(None, device, dtype), device=device)
            system = None
            model.eval()
        stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        return cls(model, tokenizer, system, stops, run_row_spec(target))

    def use_run_format(self, run_path: str) -> None:
        """Render as `run_path` was trained (its tokenizer, chat template and end-of-turn tokens):
        a base model scored "before" in the format the run learned, e.g. seed 003's plain `<sep>`."""
        self.tokenizer = rundir.run_tokenizer(rundir.open_run_dir(run_path))
        self.stop_ids = stop_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))

    def chat(self, message: str, history: list[dict] | None = None, stream: bool = False,
             **settings) -> str | Iterator[str]:
        """One turn: `message` after `history` (a list of {"role", "content"}); the reply, or its pieces
        when `stream`. A `history` list given is extended with the turn once the reply is complete, so
        a notebook keeps a conversation in one list. `settings`: GenerationSettings fields."""
        turns = [*(history or []), {"role": "user", "content": message}]
        options = GenerationSettings(**settings)
        if not stream:
            answer = self.reply(turns, options)
            _remember(history, message, answer)
            return answer
        return self._streamed_turn(turns, options, history, message)

    def _streamed_turn(self, turns, options, history, message) -> Iterator[str]:
        pieces = []
        for piece in self.stream(turns, options):
            pieces.append(piece)
            yield piece
        _remember(history, message, "".join(pieces).strip())

    def predict(self, rows: list, batch_size: int = 64, **settings) -> list[str]:
        """Replies in input order for prompts (str), conversations (message lists) or rows shaped like
        the training data (dicts, read by data/prompts.py as `predict` reads a file)."""
        from chattune.data.prompts import prompt_messages
        from chattune.infer.predict import predict_all

        conversations = [  # a dict row builds its prompt as training did; text and messages are chat turns
            self.with_examples([{"role": "user", "content": row}]) if isinstance(row, str)
            else prompt_messages(row, f"rows[{i}]", self.row_spec) if isinstance(row, dict)
            else self.with_examples(list(row))
            for i, row in enumerate(rows)
        ]
        return predict_all(self, conversations, GenerationSettings(**settings), batch_size)

    def prompt_ids(self, messages: list[dict]):
        """Typed text stays text: '<|im_end|>' in a message never becomes the end-of-turn token."""
        import torch
        from transformers import BatchEncoding

        ids = prompt_ids(self.tokenizer, with_system(self.with_examples(messages), self.system))
        input_ids = torch.tensor([ids], dtype=torch.long)
        return BatchEncoding({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})

    def with_examples(self, messages: list[dict]) -> list[dict]:
        """A run trained with data.retrieval: its saved index's examples before the last user turn."""
        from chattune.data.retrieval import with_retrieved_examples

        return with_retrieved_examples(messages, getattr(self.row_spec, "retriever", None))

    def _generate_kwargs(self, messages, settings: GenerationSettings) -> dict:
        inputs = self.prompt_ids(messages).to(self.model.device)
        return {
            **inputs,
            **settings.kwargs(),
            "eos_token_id": sorted(self.stop_ids),
            "pad_token_id": self.tokenizer.pad_token_id,
        }

    def reply(self, messages: list[dict], settings: GenerationSettings | None = None) -> str:
        import torch

        kwargs = self._generate_kwargs(messages, settings or GenerationSettings())
        with torch.inference_mode():
            out = self.model.generate(**kwargs)
        new_tokens = out[0, kwargs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated."""
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**self._generate_kwargs(messages, settings or GenerationSettings()), "streamer": streamer}

        def work():
            with torch.inference_mode():
                self.model.generate(**kwargs)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        yield from streamer
        thread.join()


def _remember(history: list[dict] | None, message: str, answer: str) -> None:
    if history is not None:
        history.extend([{"role": "user", "content": message}, {"role": "assistant", "content": answer}])


def run_row_spec(target: str):
    """A run dir reads rows as it was trained (format, columns, task prompt, system prompt)."""
    from chattune.data.formats import RowSpec

    if rundir.is_run_dir(target):
        from chattune.data.dataset import row_spec

        run = rundir.open_run_dir(target)
        data_cfg = run.config().data
        return row_spec(data_cfg, run.retriever(data_cfg))
    return RowSpec()


def repl(chat: ChatModel, settings: GenerationSettings, read=input, write=print) -> None:
    """Multi-round chat on a terminal; /reset clears history, /exit (or EOF) quits."""
    history: list[dict] = []
    write("Type a message. /reset clears the history, /exit quits.")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        if not line:
            continue
        if line == "/exit":
            return
        if line == "/reset":
            history.clear()
            write("(history cleared)")
            continue
        history.append({"role": "user", "content": line})
        pieces = []
        write("bot> ", end="", flush=True)
        try:
            for piece in chat.stream(history, settings):
                pieces.append(piece)
                write(piece, end="", flush=True)
        except TemplateError as err:  # special-token text the template cannot carry as text
            write(f"(not sent: {err})")
            history.pop()
            continue
        write("")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
