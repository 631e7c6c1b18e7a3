"""Servers bind safely (issue 37 item 6): beyond loopback, `serve` and `ui` need a key or --no-auth.

`chattune ui --host 0.0.0.0` with no key used to start without a word, letting anyone on the
network upload files and start training. Now it is one line and exit 2 before any model loads or
app is built; --no-auth starts it with a warning. uvicorn.run is replaced, so nothing listens.
"""

from __future__ import annotations

import pytest

from chattune.cli import main
from chattune.serve.binding import is_loopback


class _Registry:
    def names(self):
        return ["tiny"]


@pytest.fixture
def started(monkeypatch):
    """What would have been served: (host, port) per uvicorn.run call; apps built from fakes."""
    import uvicorn

    from chattune.serve import app as serve_app
    from chattune.serve import registry
    from chattune.ui import app as ui_app

    calls = []
    monkeypatch.delenv("CHATTUNE_API_KEY", raising=False)
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: calls.append((host, port)))
    monkeypatch.setattr(registry, "load_registry", lambda *a, **k: _Registry())
    monkeypatch.setattr(serve_app, "create_app", lambda *a, **k: "serve-app")
    monkeypatch.setattr(ui_app, "create_ui_app", lambda *a, **k: "ui-app")
    return calls


def _argv(command: str, *flags: str) -> list[str]:
    return ["serve", "some-run", *flags] if command == "serve" else ["ui", *flags]


@pytest.mark.parametrize("command", ["serve", "ui"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "myhost.example"])
def test_beyond_loopback_without_a_key_is_refused(command, host, started, monkeypatch, capsys):
    from chattune.serve import registry

    monkeypatch.setattr(registry, "load_registry", lambda *a, **k: pytest.fail("a model loaded"))
    assert main(_argv(command, "--host", host)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (f"error: {command} --host {host}: other machines could connect, and there is no "
                        "API key; give --api-key KEY (or set CHATTUNE_API_KEY), or --no-auth to let "
                        "anyone who reaches the port use it")
    assert started == []


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_no_auth_starts_with_a_warning(command, started, capsys):
    assert main(_argv(command, "--host", "0.0.0.0", "--no-auth")) == 0
    err = capsys.readouterr().err
    assert (f"warning: {command} on 0.0.0.0 with --no-auth: anyone who can reach this port can use "
            "it without a key") in err
    assert started and started[0][0] == "0.0.0.0"


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_a_key_or_loopback_starts_without_a_warning(command, started, monkeypatch, capsys):
    assert main(_argv(command, "--host", "0.0.0.0", "--api-key", "s3cret")) == 0
    monkeypatch.setenv("CHATTUNE_API_KEY", "from-env")
    assert main(_argv(command, "--host", "0.0.0.0")) == 0
    monkeypatch.delenv("CHATTUNE_API_KEY")
    assert main(_argv(command)) == 0  # default 127.0.0.1
    assert main(_argv(command, "--host", "localhost")) == 0
    assert "warning" not in capsys.readouterr().err
    assert [host for host, _ in started] == ["0.0.0.0", "0.0.0.0", "127.0.0.1", "localhost"]


@pytest.mark.parametrize("command", ["serve", "ui"])
def test_no_auth_with_a_key_is_a_contradiction(command, started, capsys):
    assert main(_argv(command, "--host", "0.0.0.0", "--no-auth", "--api-key", "k")) == 2
    assert "--no-auth and an API key (--api-key or CHATTUNE_API_KEY) contradict" in capsys.readouterr().err
    assert started == []


def test_loopback_addresses():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "192.168.1.20", "example.com", "", "127.0.0.1.nip.io"):
        assert not is_loopback(host), host
