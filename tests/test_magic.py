"""`%load_ext chattune` and `%%chat` (chattune/magic.py), driven through IPython's own test shell."""

from __future__ import annotations

import pytest

pytest.importorskip("IPython", reason="the notebook extra (ipython) is in requirements.lock; install it")


@pytest.fixture(scope="module")
def shell():
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "chattune")
    return ip


@pytest.fixture(scope="module")
def bot(varied_tiny_model_dir):
    import chattune

    return chattune.load(str(varied_tiny_model_dir), device="cpu")


def test_cells_stream_the_reply_and_keep_the_history(shell, bot, capsys):
    from chattune.magic import session

    shell.run_cell_magic("chat", "", "/reset")
    capsys.readouterr()
    shell.run_cell_magic("chat", "--max-new-tokens 6", "Who are you?\n")
    first = capsys.readouterr().out
    reference: list[dict] = []
    expected = bot.chat("Who are you?", history=reference, max_new_tokens=6)
    assert first.strip() == expected and expected != ""
    assert session().history == reference

    shell.run_cell_magic("chat", "--max-new-tokens 6", "And what can you do?")
    second = capsys.readouterr().out
    assert second.strip() == bot.chat("And what can you do?", history=reference, max_new_tokens=6)
    assert [t["content"] for t in session().history if t["role"] == "user"] == ["Who are you?",
                                                                               "And what can you do?"]
    shell.run_cell_magic("chat", "", "/reset")
    assert "history cleared" in capsys.readouterr().out and session().history == []


def test_rounds_keeps_only_the_last_rounds_in_the_prompt(shell, bot, capsys):
    from chattune.magic import session

    shell.run_cell_magic("chat", "", "/reset")
    for question in ("one?", "two?", "three?"):
        shell.run_cell_magic("chat", "--max-new-tokens 3 --rounds 1", question)
    capsys.readouterr()
    assert [t["content"] for t in session().history if t["role"] == "user"] == ["two?", "three?"]


def test_chat_load_line_magic_switches_model_and_starts_a_new_conversation(shell, bot, tiny_model_dir, capsys):
    from chattune.magic import session

    shell.run_cell_magic("chat", "--max-new-tokens 3", "hello")
    assert session().history
    shell.run_line_magic("chat_load", f"{tiny_model_dir} --device cpu --dtype fp32")
    assert session().model is not bot and session().history == []
    shell.run_cell_magic("chat", "--max-new-tokens 3", "hello")
    assert len(session().history) == 2
    capsys.readouterr()


def test_bad_options_say_what_is_allowed(shell):
    from chattune.magic import chat_cell

    with pytest.raises(ValueError, match="--max-new-tokens"):
        chat_cell("--tokens 5", "hi")
