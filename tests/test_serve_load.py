"""chattune serve under load: 50 concurrent streaming clients for ~10 s against a real server.

`chattune serve` runs in a subprocess on 127.0.0.1 (a free port) serving the tiny model;
bench/serve_load.py drives it. Every reply must be well formed and equal the greedy reply to
its own client's prompt, the hung-up streams must not disturb anyone, and the server must
still answer afterwards. The p50/p95 latencies are printed (even without -s) and written to
$TMPDIR/chattune-serve-load-test.json; they are measurements of a shared machine, not targets.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest
from bench.serve_load import LoadSettings, format_report, parse_stream, run_load, serve_subprocess

CLIENTS, SECONDS = 50, 10.0


@pytest.mark.slow  # > ~15 s on 2 cores: subprocesses or many requests
def test_fifty_streaming_clients_get_their_own_complete_answers(varied_tiny_model_dir, tmp_path, capsys):
    settings = LoadSettings(clients=CLIENTS, seconds=SECONDS, max_tokens=8, long_tokens=64, disconnect_every=7)
    with serve_subprocess(str(varied_tiny_model_dir), settings.long_tokens, tmp_path / "server.log") as (url, model):
        report = asyncio.run(run_load(url, model, settings))
    out = Path(tempfile.gettempdir()) / "chattune-serve-load-test.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with capsys.disabled():
        print(f"\nserve load ({CLIENTS} clients, {SECONDS:g} s): {format_report(report)}\n  -> {out}")
    assert report["failures"] == 0, report["first_failures"]
    assert report["mismatches"] == report["mixed_up"] == 0
    # Mix-ups would be visible: the clients' greedy replies differ from each other.
    assert report["distinct_references"] >= CLIENTS // 2
    assert report["requests"] >= CLIENTS and report["completed"] > 0
    assert report["hung_up"] > 0 and report["hung_up_ok"] == report["hung_up"]
    assert report["after_load_problems"] == []
    assert report["ttft_s"]["n"] > 0 and report["ttft_s"]["p50"] <= report["total_s"]["p95"]


def _sse(*chunks, done=True):
    lines = [f"data: {json.dumps(c)}" for c in chunks]
    return lines + (["data: [DONE]"] if done else [])


def _chunk(delta, finish=None, cid="chatcmpl-a", model="m"):
    return {"id": cid, "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def test_stream_checker_accepts_a_good_stream_and_catches_bad_ones():
    good = _sse(_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hi"}), _chunk({}, "length"))
    assert parse_stream(good, "m") == ("Hi", "chatcmpl-a", "length")
    bad = {
        "no [DONE]": good[:-1],
        "two ids": _sse(_chunk({"role": "assistant"}), _chunk({"content": "x"}, cid="chatcmpl-b"), _chunk({}, "stop")),
        "other model": _sse(_chunk({"role": "assistant"}, model="x"), _chunk({}, "stop")),
        "no finish": _sse(_chunk({"role": "assistant"}), _chunk({"content": "x"})),
        "no role": _sse(_chunk({"content": "x"}), _chunk({}, "stop")),
        "error event": _sse(_chunk({"role": "assistant"}), {"error": {"message": "boom"}}),
        "after [DONE]": [*good, "data: {}"],
    }
    for name, lines in bad.items():
        try:
            parse_stream(lines, "m")
        except (ValueError, KeyError):
            continue
        pytest.fail(f"the checker accepted a stream with {name}")
