"""A stand-in for qemu-nbd's start: bind the socket (its file appears), listen only after a delay, then relay.

argv: SOCKET UPSTREAM DELAY. A connection before the delay is refused, as one to a qemu-nbd between its bind()
and listen() is; after it, each connection is relayed to the real qemu-nbd listening on UPSTREAM.
"""

from __future__ import annotations

import socket
import sys
import threading
import time


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        sink.close()


def main(path: str, upstream: str, delay: float) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    time.sleep(delay)
    server.listen(4)
    while True:
        client, _ = server.accept()
        backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        backend.connect(upstream)
        threading.Thread(target=pump, args=(client, backend), daemon=True).start()
        threading.Thread(target=pump, args=(backend, client), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
