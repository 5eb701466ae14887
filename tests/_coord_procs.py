"""Helpers for the coordination tests: processes started here are stopped by pid."""

from __future__ import annotations

import os
import secrets
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

    def cmdline(self) -> str:
        """The process's command line as ``ps`` shows it (from ``/proc``)."""
        with open(f"/proc/{self.pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")

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


class Group:
    """A group of coordinator nodes, each a separate process on 127.0.0.1 (stopped by pid)."""

    def __init__(
        self,
        tmp_path,
        n: int = 3,
        extra: list[str] | None = None,
        password: str | None = None,
    ):
        self.tmp = tmp_path
        self.ports = [free_port() for _ in range(n)]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.extra = list(extra or [])
        # a group always has a secret; it goes through the environment, never argv (ps)
        self.password = password or secrets.token_urlsafe(16)
        self.env = {"OXIGDAL_COORDINATOR_PASSWORD": self.password}
        self.procs: list[Proc | None] = [None] * n
        self.starts = 0

    @property
    def password_file(self) -> str:
        """A file of mode 0600 holding the group's secret (for oxigdal.coordinator.password-file)."""
        path = str(self.tmp / "group.secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        return path

    def data_dir(self, i: int) -> str:
        return str(self.tmp / f"node{i}")

    def state_file(self, i: int) -> str:
        return str(self.tmp / f"node{i}.state.json")

    def start(self, i: int) -> Proc:
        self.starts += 1
        args = [PYTHON, "-m", "dask_oxigdal.coordination", "--self", self.addresses[i]]
        for j, a in enumerate(self.addresses):
            if j != i:
                args += ["--partner", a]
        ready = self.ready_file(i)
        if os.path.exists(ready):
            os.unlink(ready)
        args += ["--data-dir", self.data_dir(i), "--state-file", self.state_file(i)]
        args += ["--ready-file", ready, *self.extra]
        proc = Proc(args, env=self.env, log=str(self.tmp / f"node{i}.log"))
        self.procs[i] = proc
        return proc

    def ready_file(self, i: int) -> str:
        return str(self.tmp / f"node{i}.ready")

    def start_all(self) -> None:
        for i in range(len(self.addresses)):
            self.start(i)

    def index(self, address: str | None) -> int | None:
        return self.addresses.index(address) if address in self.addresses else None

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.kill()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc is not None:
                proc.kill()

    def states(self, timeout: float = 60) -> list[dict]:
        """Each live node's replica (SIGUSR1 -> JSON file), once all report the same position."""
        import json

        deadline = time.monotonic() + timeout
        while True:
            out = []
            for i, proc in enumerate(self.procs):
                if proc is None or not proc.alive():
                    continue
                # SIGUSR1 before the node installed its handler would kill it
                wait_for(lambda i=i: os.path.exists(self.ready_file(i)), 60, f"node {i} ready")
                path = self.state_file(i)
                if os.path.exists(path):
                    os.unlink(path)
                os.kill(proc.pid, signal.SIGUSR1)
                wait_for(lambda path=path: os.path.exists(path), 30, f"state of node {i}")
                with open(path) as f:
                    out.append(json.load(f))
            if len({s["applied"] for s in out}) == 1 and len({s["commit_index"] for s in out}) == 1:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes did not converge: {[s['applied'] for s in out]}")
            time.sleep(0.2)
