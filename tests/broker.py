"""A Mosquitto broker of the test's own, on a free loopback port.

Each test gets a broker it may stop, kill and start again on the same port;
persistence is on, so retained messages survive a restart as on a real site.
The system's broker (if any) is never touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or shutil.which(
        "mosquitto", path="/usr/sbin:/usr/local/sbin"
    )


class Mosquitto:
    """One mosquitto process with its config, log and store in `workdir`."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.host = HOST
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {workdir}/",
            f"log_dest file {self.log}",
            "log_type all",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would switch to the 'mosquitto' user, who cannot
            # write the test's private directory.
            lines.append("user root")
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log_text()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen in {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker cleanly (SIGTERM: it saves its retained messages)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL: nothing saved since the last save)."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
