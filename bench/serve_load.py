"""Load-test `chattune serve`: N concurrent streaming clients for D seconds, every reply checked.

`python -m bench.serve_load --seconds 60 --clients 50` (or `python -m bench serve-load ...`)
builds a tiny random Llama (or serves `--model TARGET`), starts `chattune serve` on 127.0.0.1
at a free port in a subprocess and loads it. Each client has its own prompt and streams it
again and again (SSE, greedy): a reply must be well formed (200, text/event-stream, one id
per stream and unique across streams, the right model, a role chunk first, one finish
reason, `[DONE]` last) and equal the non-streamed greedy reply to that prompt, so a reply
meant for another client shows up as a mix-up. Every `--disconnect-every`-th request asks
for a long reply and hangs up after its first token; afterwards the server must still
answer. Prints and writes (JSON) p50/p95 of time to first token and total, requests served.
Traffic goes to loopback addresses only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

LOOPBACK = ("127.0.0.1", "localhost", "::1")
KEY = "load-test-key"
COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "ochre", "silver", "coral", "indigo"]


@dataclass
class LoadSettings:
    clients: int = 50
    seconds: float = 60.0
    max_tokens: int = 8  # per checked reply
    long_tokens: int = 64  # asked by the requests that hang up (the server cap must allow it)
    disconnect_every: int = 7
    request_timeout: float = 120.0


@dataclass
class Outcome:
    client: int
    ok: bool
    hung_up: bool = False
    error: str | None = None
    ttft: float | None = None  # seconds to the first content chunk
    total: float | None = None
    stream_id: str | None = None
    text: str | None = None  # what the client received


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    stream_ids: set = field(default_factory=set)


def prompt_for(client: int) -> str:
    return f"Client {client}: say something about the number {client * 7919 % 1000} and the colour {COLOURS[client % 10]}."


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK and not (host or "").startswith("127."):
        raise ValueError(f"{url}: the load test only talks to loopback addresses")


def parse_stream(lines: list[str], model: str) -> tuple[str, str, str | None]:
    """(text, stream id, finish reason) of a complete SSE reply; ValueError if malformed."""
    events = [line[len("data: "):] for line in lines if line]
    if any(not line.startswith("data: ") for line in lines if line):
        raise ValueError("a non-data line in the stream")
    if not events or events[-1] != "[DONE]" or events.count("[DONE]") != 1:
        raise ValueError("the stream does not end with exactly one [DONE]")
    chunks = [json.loads(e) for e in events[:-1]]
    if not chunks or any("error" in c for c in chunks):
        raise ValueError(f"error event or no chunks: {events[:3]}")
    ids = {c["id"] for c in chunks}
    if len(ids) != 1 or not next(iter(ids)).startswith("chatcmpl-"):
        raise ValueError(f"chunk ids differ within one stream: {sorted(ids)[:3]}")
    if {c["object"] for c in chunks} != {"chat.completion.chunk"} or {c["model"] for c in chunks} != {model}:
        raise ValueError("wrong object or model in a chunk")
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    if choices[0]["delta"].get("role") != "assistant":
        raise ValueError("the first chunk does not carry the assistant role")
    finishes = [c["finish_reason"] for c in choices if c["finish_reason"] is not None]
    if len(finishes) != 1 or choices[-1]["finish_reason"] is None:
        raise ValueError(f"finish reasons {finishes}: want exactly one, on the last chunk")
    return "".join(c["delta"].get("content") or "" for c in choices), ids.pop(), finishes[0]


async def stream_once(http: httpx.AsyncClient, url: str, model: str, client: int, hang_up: bool,
                      settings: LoadSettings, reference: str) -> Outcome:
    body = {"model": model, "messages": [{"role": "user", "content": prompt_for(client)}], "stream": True,
            "temperature": 0, "max_tokens": settings.long_tokens if hang_up else settings.max_tokens}
    started = time.perf_counter()
    outcome = Outcome(client, ok=False, hung_up=hang_up)
    lines: list[str] = []
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200 or not resp.headers.get("content-type", "").startswith("text/event-stream"):
            outcome.error = f"status {resp.status_code} {resp.headers.get('content-type')}"
            return outcome
        async for line in resp.aiter_lines():
            lines.append(line)
            if outcome.ttft is None and '"content": "' in line and '"content": ""' not in line:
                outcome.ttft = time.perf_counter() - started
                if hang_up:
                    break  # leaving the block closes the connection mid-stream
    outcome.total = time.perf_counter() - started
    if hang_up:
        return _judge_partial(outcome, lines, reference)
    try:
        outcome.text, outcome.stream_id, _ = parse_stream(lines, model)
    except (ValueError, KeyError, IndexError, json.JSONDecodeError) as err:
        outcome.error = f"malformed stream: {err}"
        return outcome
    text = outcome.text
    outcome.ok = text == reference
    if not outcome.ok:
        outcome.error = f"mismatch: got {text!r}, want {reference!r}"
    return outcome


def _judge_partial(outcome: Outcome, lines: list[str], reference: str) -> Outcome:
    """A hung-up stream: its first piece must still be the start of this client's own reply."""
    pieces = [json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
              for line in lines if line.startswith("data: {") and '"choices": [{' in line]
    outcome.text = text = "".join(pieces)
    if reference:
        outcome.ok = bool(text) and (reference.startswith(text) or text.startswith(reference))
    else:  # an empty greedy reply: the long one may go on after what the short one stopped at
        outcome.ok = True
    if not outcome.ok:
        outcome.error = f"hung-up stream began {text!r}, not the start of {reference!r}"
    return outcome


async def client_loop(http, url, model, client, deadline, settings, references, tally: Tally) -> None:
    k = 0
    while time.monotonic() < deadline:
        hang_up = (client + k) % settings.disconnect_every == 0
        k += 1
        try:
            outcome = await asyncio.wait_for(
                stream_once(http, url, model, client, hang_up, settings, references[client]),
                settings.request_timeout)
        except (httpx.HTTPError, TimeoutError, OSError) as err:
            outcome = Outcome(client, ok=False, hung_up=hang_up, error=f"{type(err).__name__}: {err}")
        if outcome.stream_id is not None:
            if outcome.stream_id in tally.stream_ids:
                outcome.ok, outcome.error = False, f"stream id {outcome.stream_id} seen twice"
            tally.stream_ids.add(outcome.stream_id)
        tally.outcomes.append(outcome)


async def reference_replies(http, url, model, clients, max_tokens: int) -> list[str]:
    """The non-streamed greedy reply to each client's prompt, asked one at a time."""
    out = []
    for client in clients:
        body = {"model": model, "messages": [{"role": "user", "content": prompt_for(client)}],
                "temperature": 0, "max_tokens": max_tokens}
        resp = await http.post(url + "/v1/chat/completions", json=body)
        resp.raise_for_status()
        out.append(resp.json()["choices"][0]["message"]["content"])
    return out


async def still_serving(http, url, model, references: list[str], max_tokens: int) -> list[str]:
    """Problems found when asking again after the load (empty: the server is fine)."""
    problems = []
    resp = await http.get(url + "/v1/models")
    if resp.status_code != 200 or model not in [m["id"] for m in resp.json()["data"]]:
        problems.append(f"GET /v1/models after the load: {resp.status_code}")
    for client in sorted({0, len(references) // 2, len(references) - 1}):
        [again] = await reference_replies(http, url, model, [client], max_tokens)
        if again != references[client]:
            problems.append(f"client {client}'s prompt answered {again!r} after the load")
    return problems


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated q-th percentile (0-100) of `values`; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(outcomes: list[Outcome], references: list[str], wall: float) -> dict:
    done = [o for o in outcomes if o.ok and not o.hung_up]
    stats = {}
    for name, values in (("ttft_s", [o.ttft for o in done if o.ttft is not None]),
                         ("total_s", [o.total for o in done])):
        stats[name] = {"p50": _round(percentile(values, 50)), "p95": _round(percentile(values, 95)),
                       "max": _round(max(values, default=None)), "n": len(values)}
    mixed = [o for o in outcomes if not o.hung_up and o.text is not None and o.text != references[o.client]
             and o.text in references]
    failures = [o for o in outcomes if not o.ok]
    return {
        "requests": len(outcomes), "completed": len(done), "hung_up": sum(o.hung_up for o in outcomes),
        "hung_up_ok": sum(o.hung_up and o.ok for o in outcomes), "failures": len(failures),
        "mismatches": sum(bool(o.error and o.error.startswith("mismatch")) for o in outcomes),
        "mixed_up": len(mixed), "distinct_references": len(set(references)),
        "clients_served": len({o.client for o in done}), "wall_s": round(wall, 2),
        "completed_per_s": round(len(done) / wall, 2) if wall else None, **stats,
        "first_failures": [asdict(o) for o in failures[:10]],
    }


def _round(value):
    return None if value is None else round(value, 4)


async def run_load(url: str, model: str, settings: LoadSettings, key: str = KEY) -> dict:
    """Run the load against a server at `url` (loopback only); returns the summary dict."""
    check_loopback(url)
    limits = httpx.Limits(max_connections=settings.clients + 8, max_keepalive_connections=settings.clients + 8)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=settings.request_timeout) as http:
        references = await reference_replies(http, url, model, range(settings.clients), settings.max_tokens)
        tally = Tally()
        started = time.monotonic()
        deadline = started + settings.seconds
        tasks = [client_loop(http, url, model, i, deadline, settings, references, tally)
                 for i in range(settings.clients)]
        await asyncio.wait_for(asyncio.gather(*tasks), settings.seconds + settings.request_timeout + 30)
        wall = time.monotonic() - started
        report = summarize(tally.outcomes, references, wall)
        report["after_load_problems"] = await still_serving(http, url, model, references, settings.max_tokens)
    report["settings"] = asdict(settings)
    return report


# ---- the server under test ----

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_subprocess(target: str, max_tokens: int, log: Path, key: str = KEY, startup_s: float = 300,
                     threads: int | None = 1):
    """`chattune serve TARGET` on 127.0.0.1:<free port>; yields (base url, served model name).

    `threads` sets OMP_NUM_THREADS for the server: on a busy 2-core machine one torch thread
    generates the tiny model's tokens 5-10x faster than two (measured: 0.07 vs 0.3-1.1 s per
    8-token reply), since the two threads keep waiting for each other.
    """
    port = free_port()
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "chattune.cli", "serve", target, "--host", "127.0.0.1", "--port", str(port),
           "--api-key", key, "--max-tokens", str(max_tokens), "--device", "cpu"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        model = _wait_until_up(proc, url, key, startup_s, log)
        yield url, model
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _wait_until_up(proc, url: str, key: str, startup_s: float, log: Path) -> str:
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chattune serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            resp = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            return resp.json()["data"][0]["id"]
        except httpx.TransportError:
            time.sleep(0.5)
    raise RuntimeError(f"chattune serve did not come up within {startup_s} s:\n{log.read_text()[-3000:]}")


def make_tiny_model(out: Path) -> Path:
    """A 2-layer, hidden-64 random Llama with the built-in tokenizer (tests' varied_tiny_model_dir)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from chattune.models import builtin_gguf_path

    gguf = builtin_gguf_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def format_report(report: dict) -> str:
    t, f = report["ttft_s"], report["total_s"]
    return (f"{report['requests']} requests in {report['wall_s']} s from {report['settings']['clients']} clients: "
            f"{report['completed']} complete ({report['completed_per_s']}/s), {report['hung_up']} hung up "
            f"mid-stream, {report['failures']} failures, {report['mismatches']} mismatches; "
            f"first token p50 {t['p50']} s p95 {t['p95']} s; total p50 {f['p50']} s p95 {f['p95']} s; "
            f"after the load: {report['after_load_problems'] or 'still serving'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_load", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent streaming clients (default 50)")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per checked reply (default 8)")
    parser.add_argument("--disconnect-every", type=int, default=7, help="every Nth request hangs up (default 7)")
    parser.add_argument("--server-threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the server (default 1; 0: torch's default)")
    parser.add_argument("--model", help="target to serve (default: a tiny random Llama built in a temp dir)")
    parser.add_argument("--out", type=Path, help="JSON report (default bench/results/serve-load-<date>.json)")
    args = parser.parse_args(argv)
    settings = LoadSettings(clients=args.clients, seconds=args.seconds, max_tokens=args.max_tokens,
                            disconnect_every=args.disconnect_every)
    with tempfile.TemporaryDirectory(prefix="chattune-serve-load-") as tmp:
        target = args.model or str(make_tiny_model(Path(tmp) / "tiny-llama"))
        log = Path(tmp) / "server.log"
        with serve_subprocess(target, settings.long_tokens, log, threads=args.server_threads) as (url, model):
            report = asyncio.run(run_load(url, model, settings))
    report["date"] = datetime.now().isoformat(timespec="seconds")
    report["target"] = args.model or "tiny random Llama (2 layers, hidden 64)"
    report["cpu_count"], report["server_threads"] = os.cpu_count(), args.server_threads or "torch default"
    out = args.out or Path(__file__).resolve().parent / "results" / datetime.now().strftime("serve-load-%Y-%m-%d-%H%M.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_report(report))
    print(f"wrote {out}")
    return 0 if report["failures"] == 0 and not report["after_load_problems"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
