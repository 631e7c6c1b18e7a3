"""`%load_ext chattune`: the `%%chat` cell magic that talks to a loaded model; no model logic here.

As torchkeras' ChatLLM gives seed 001's readers, a cell starting with `%%chat` sends its text to
the model, streams the answer into the cell's output and keeps the conversation across cells:

    %load_ext chattune
    bot = chattune.load(run)          # or:  %chat_load runs/demo-...  [--device cpu] [--dtype fp32]
    %%chat                            # options: --max-new-tokens N --temperature T --rounds R
    Who are you?

A cell holding only `/reset` clears the history; `/history` prints it. The model is the one named
by `%chat_load`, else the last `chattune.load(...)` result (infer/chat.py chattune.api.load records it).
`--rounds R` keeps the last R user/assistant rounds in the prompt (torchkeras' max_chat_rounds).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, field

__all__ = ["ChatSession", "register", "session"]


@dataclass
class ChatSession:
    """The notebook's conversation: which model, the turns so far, the reply settings."""

    model: object = None  # infer.chat.ChatModel
    history: list[dict] = field(default_factory=list)

    def send(self, message: str, rounds: int | None, write, **settings) -> str:
        if self.model is None:
            raise RuntimeError("no model loaded: run `bot = chattune.load(RUN_DIR)` or `%chat_load RUN_DIR` first")
        if rounds is not None:  # keep the last `rounds` user+assistant pairs
            del self.history[: max(0, len(self.history) - 2 * rounds)]
        pieces = []
        for piece in self.model.chat(message, self.history, stream=True, **settings):
            pieces.append(piece)
            write(piece)
        write("\n")
        return "".join(pieces).strip()


_SESSION = ChatSession()


def session() -> ChatSession:
    """The conversation `%%chat` continues (one per Python process, as a notebook kernel has)."""
    return _SESSION


def remember_loaded(model) -> None:
    """The model `%%chat` talks to from now on; a new model starts a new conversation."""
    if _SESSION.model is not model:
        _SESSION.model, _SESSION.history = model, []


def _cell_options(line: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="%%chat", add_help=False)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=None)
    try:
        return parser.parse_args(shlex.split(line))
    except SystemExit:
        raise ValueError(f"%%chat options: {parser.format_usage().strip()}, got {line!r}") from None


def chat_cell(line: str, cell: str, write=None) -> None:
    """The body of `%%chat`: /reset, /history, or a message whose reply is streamed to `write`."""
    write = write or _write_stdout
    text = cell.strip()
    if text == "/reset":
        _SESSION.history.clear()
        write("(history cleared)\n")
        return
    if text == "/history":
        for turn in _SESSION.history:
            write(f"{turn['role']}: {turn['content']}\n")
        return
    if not text:
        return
    options = _cell_options(line)
    _SESSION.send(text, options.rounds, write, max_new_tokens=options.max_new_tokens,
                  temperature=options.temperature, top_p=options.top_p)


def chat_load_line(line: str) -> object:
    """`%chat_load TARGET [--device D] [--dtype T]`: chattune.load(TARGET) for the following cells."""
    from chattune.api import load

    parser = argparse.ArgumentParser(prog="%chat_load", add_help=False)
    parser.add_argument("target")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    try:
        args = parser.parse_args(shlex.split(line))
    except SystemExit:
        raise ValueError(f"{parser.format_usage().strip()}, got {line!r}") from None
    model = load(args.target, device=args.device, dtype=args.dtype)
    remember_loaded(model)
    return model


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def register(ipython) -> None:
    """Add %%chat and %chat_load to an IPython shell (`%load_ext chattune` calls this)."""
    ipython.register_magic_function(lambda line, cell: chat_cell(line, cell), magic_kind="cell", magic_name="chat")
    ipython.register_magic_function(lambda line: chat_load_line(line) and None, magic_kind="line",
                                    magic_name="chat_load")
