"""Helpers for the serve tests: train tiny run dirs and run a real uvicorn server in a thread."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path


def train_tiny_run(tiny_model_dir: Path, run_dir: Path, seed: int) -> Path:
    """A one-step run dir; a high lr so the adapter visibly changes the tiny model's answers."""
    from chattune.config import load_config
    from chattune.training.trainer import train

    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"run_dir={run_dir}", f"name={run_dir.name}", "data.size=8",
        "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1", "train.lr=5e-2",
        "train.precision=fp32", "lora.dropout=0.0", f"seed={seed}",
    ])
    return train(cfg).run_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(app):
    """Serve `app` with uvicorn on 127.0.0.1:<free port> in a thread; yield the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def headless_chromium(profile_dir: Path):
    """Debian's chromium + chromedriver under selenium; a missing browser fails (make test installs it)."""
    import shutil

    import pytest
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are required: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1000", f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    web = webdriver.Chrome(service=Service(driver), options=options)
    web.set_page_load_timeout(60)
    try:
        yield web
    finally:
        web.quit()
