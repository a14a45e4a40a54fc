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
