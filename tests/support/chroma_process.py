"""A real `chroma run` server on a free loopback port, for tests of the HttpClient path."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class ChromaServer:
    host: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Stop the server now (it is stopped anyway when its `chroma_server` block ends)."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def chroma_executable() -> str:
    """The `chroma` console script of this interpreter's environment."""
    beside = Path(sys.executable).with_name("chroma")
    found = str(beside) if beside.exists() else shutil.which("chroma")
    if not found:
        raise RuntimeError("the `chroma` command is missing: is chromadb installed?")
    return found


@contextmanager
def chroma_server(
    path: Path, *, port: int | None = None, deadline_s: float = 60.0
) -> Iterator[ChromaServer]:
    """Start `chroma run --path PATH` on `port` (default: a free one); yield once its heartbeat
    answers."""
    path.mkdir(parents=True, exist_ok=True)
    log = path.parent / f"{path.name}-chroma.log"
    port = port or free_port()
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    command = [chroma_executable(), "run", "--path", str(path), "--host", "127.0.0.1"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    server = ChromaServer("127.0.0.1", port, log, process)
    try:
        give_up = time.monotonic() + deadline_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chroma run exited with {process.returncode}:\n{server.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > give_up:
                raise RuntimeError(f"chroma run did not answer in {deadline_s} s:\n{server.tail()}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
