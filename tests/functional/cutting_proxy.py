"""A TCP relay that cuts downloads, to inject a fault no real server makes on demand."""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttingProxy:
    """A TCP relay on 127.0.0.1 in front of a real server that cuts downloads.

    A FAKE, to inject a fault: the first ``cuts`` responses longer than
    ``after`` bytes are cut off there (the connection is closed), as when a
    network or a server dies mid-download. Killing the real server does the
    same, but breaks it for every other test that uses it meanwhile (the shared
    Swift proxy error-limits a killed object server for a minute).
    """

    def __init__(self, target_port: int, after: int, cuts: int) -> None:
        self.after, self.cuts_left = after, cuts
        self.cut = 0
        self._target = target_port
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if response and sent + len(data) > self.after:
                    with self._lock:
                        cut = self.cuts_left > 0
                        if cut:
                            self.cuts_left -= 1
                            self.cut += 1
                    if cut:
                        dst.sendall(data[: self.after - sent])
                        break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._listener.close()
