"""Run a command in a pseudo-terminal and read back the screen it leaves (a small VT100 subset)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

# CSI (ESC [ params final), OSC (ESC ] ... BEL or ESC \), or a lone two-byte escape
ESCAPE = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")


def run_in_pty(
    argv: list[str], env: dict, columns: int = 160, rows: int = 50, timeout: float = 600
) -> tuple[int, str]:
    """(exit code, everything written) of `argv` with stdin, stdout and stderr on one terminal."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)}
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"):
        env.pop(name, None)
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if process.poll() is None and time.monotonic() >= deadline:
            process.kill()
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", errors="replace")


def screen(raw: str, columns: int = 160) -> list[str]:
    """The lines `raw` leaves on a terminal `columns` wide that never scrolls its history away:
    carriage return, line feed, backspace, cursor up/down/left/right/column, erase in line; colours
    and other escapes are dropped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    position = 0
    for match in ESCAPE.finditer(raw + "\x1b[m"):
        for char in raw[position : match.start()]:
            row, col = _put(lines, row, col, char, columns)
        position = match.end()
        params, final = match.group(1), match.group(2)
        if final is None or (params or "").startswith("?"):
            continue
        count = int(params.split(";")[0]) if params and params.split(";")[0].isdigit() else 1
        row, col = _move(lines, row, col, final, count, params)
    return ["".join(line).rstrip() for line in lines]


def _move(lines: list[list[str]], row: int, col: int, final: str, count: int, params: str):
    if final == "A":
        row = max(row - count, 0)
    elif final == "B":
        row += count
        while len(lines) <= row:
            lines.append([])
    elif final == "C":
        col += count
    elif final == "D":
        col = max(col - count, 0)
    elif final == "G":
        col = max(count - 1, 0)
    elif final == "K":
        line, mode = lines[row], int(params or 0)
        if mode == 2:
            line.clear()
        elif mode == 1:
            line[: col + 1] = [" "] * min(col + 1, len(line))
        else:
            del line[col:]
    return row, col


def _put(lines: list[list[str]], row: int, col: int, char: str, columns: int):
    if char == "\r":
        return row, 0
    if char == "\n":
        row += 1
        if len(lines) <= row:
            lines.append([])
        return row, col
    if char == "\b":
        return row, max(col - 1, 0)
    if char < " ":
        return row, col
    if col >= columns:  # autowrap
        row, col = row + 1, 0
        if len(lines) <= row:
            lines.append([])
    line = lines[row]
    line.extend(" " * (col + 1 - len(line)))
    line[col] = char
    return row, col + 1
