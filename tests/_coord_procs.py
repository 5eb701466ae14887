"""Helpers for the coordination tests: processes started here are stopped by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

__all__ = ["Proc", "free_port", "wait_for"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Proc:
    """A child process, stopped by pid (SIGKILL/SIGSTOP/SIGCONT by pid too)."""

    def __init__(self, args: list[str], *, env: dict | None = None, log: str | None = None):
        self.args = args
        self.log = log
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.popen = subprocess.Popen(
            args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        )
        if log:
            out.close()
        self.pid = self.popen.pid
        self.stopped = False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            if self.stopped:
                os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:  # SIGSTOP: a partitioned, frozen node
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self.stopped = False

    def terminate(self, timeout: float = 10) -> None:
        if self.alive():
            if self.stopped:
                self.cont()
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        if self.log and os.path.exists(self.log):
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        return ""


PYTHON = sys.executable
