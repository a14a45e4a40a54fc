"""Small process helpers the lab's services share (agent, CloudStack simulator)."""

from __future__ import annotations

import signal
import socket
import subprocess


def free_port() -> int:
    """A port nothing listens on right now (the service binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_child(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Signal a child we started, wait, SIGKILL if it lingers; reaps it. Idempotent."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_alive(pid: int, marker: bytes) -> bool:
    """True when ``pid`` runs and ``marker`` is one of its argv words: a pid alone may have been reused."""
    from pathlib import Path

    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and marker in argv


def stop_pid(pid: int, marker: bytes, timeout: float = 10) -> None:
    """Stop a service started by an earlier process (SIGTERM, then SIGKILL), only if it is still that service."""
    import os
    import time

    if not process_alive(pid, marker):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if process_alive(pid, marker):
        os.kill(pid, signal.SIGKILL)
