"""A pre-imported interpreter that forks ``recsys`` commands: the real CLI, in a process of its own, without
paying torch's, torchrec's and torchmetrics' imports (~8 s of CPU on a 2-core AMD EPYC) for each command. The
test suite runs its hundreds of commands through one (tests/conftest.py), the benchmarks their short training
runs (benchmarks/bench_models.py), where start-up would otherwise be most of what they time.

A client starts one zygote, ``python -m recsys.zygote SOCKET [MODULE ...]``, which imports what the CLI imports
(and the extra modules named), never runs an OpenMP region (a forked child of a process that did hangs in GNU
libgomp) and then forks one child per request. A child takes the request's standard streams, working
directory, environment and arguments, resets what a fresh interpreter would have fresh (torch's and numpy's
seeds, the thread count the environment asks for), and runs ``recsys.cli.main`` as ``python -m
recsys.cli.main`` would; the zygote reports its exit status and the CPU it used. What differs from a fresh
interpreter: modules are imported once, before the request's environment (libgomp reads ``OMP_NUM_THREADS``
when it loads, so settings read at import need a fresh interpreter), and import-time warnings go to the
zygote's log rather than the command's stderr.

Protocol: one SOCK_SEQPACKET connection per command; the client sends a JSON request with the three standard
streams as file descriptors, the zygote answers ``{"pid": N}`` and, when the child ends, ``{"returncode": N,
"cpu_s": S}`` (returncode negative: the signal that killed it, as ``subprocess`` reports it; cpu_s: user +
system seconds of the child and the processes it waited for, from ``wait4``).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import IO, Any

# Read when a module loads: rich's consoles (COLUMNS, LINES) and libgomp (OMP_NUM_THREADS: the zygote keeps
# torch's own default, and each child sets the count its environment asks for). Left out of the zygote's.
_PER_COMMAND = ("COLUMNS", "LINES", "OMP_NUM_THREADS")


class ZygoteProcess:
    """A forked command, with the part of ``subprocess.Popen``'s interface the tests use."""

    def __init__(self, conn: socket.socket, args: list[str]) -> None:
        self._conn, self.args = conn, args
        self.pid: int = json.loads(conn.recv(4096))["pid"]
        self.returncode: int | None = None
        self.cpu_s: float | None = None  # once it has ended

    def _collect(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                reply = self._conn.recv(4096)
            except (TimeoutError, BlockingIOError):
                return None
            if not reply:
                raise RuntimeError(f"the zygote died while running {self.args}")
            ended = json.loads(reply)
            self.returncode, self.cpu_s = ended["returncode"], ended["cpu_s"]
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._collect(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this child's
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The client side: starts ``python -m recsys.zygote`` in ``cwd`` on first use, preloading ``preload``
    (modules beyond the CLI's) too. One per process that runs many commands."""

    def __init__(self, cwd: Path, preload: tuple[str, ...] = ()) -> None:
        self._cwd, self._preload = cwd, preload
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_path = ""

    def _started(self) -> str:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                folder = tempfile.mkdtemp(prefix="recsys-zygote-")
                self._socket_path = os.path.join(folder, "socket")
                env = {name: value for name, value in os.environ.items() if name not in _PER_COMMAND}
                log = open(os.path.join(folder, "log"), "wb")  # noqa: SIM115 - the zygote's, for its life
                # stdin: a pipe that closes when this process ends, so the zygote never outlives it
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "recsys.zygote", self._socket_path, *self._preload], cwd=self._cwd,
                    env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
                log.close()
                atexit.register(self._process.kill)
                _wait_for_socket(self._socket_path, self._process)
            return self._socket_path

    def popen(self, args: list[str], *, cwd: Path | str, env: dict[str, str], stdin: int | IO[Any] | None = None,
              stdout: int | IO[Any] | None = None, stderr: int | IO[Any] | None = None, code: str | None = None,
              new_session: bool = False) -> ZygoteProcess:
        """``python -m recsys.cli.main ARGS`` (with ``code``: ``python -c CODE ARGS``) in a child of the zygote;
        streams are files (None: this one's); ``new_session``: as ``subprocess``'s ``start_new_session``."""
        streams = [_fileno(stdin, 0), _fileno(stdout, 1), _fileno(stderr, 2)]
        if stderr == subprocess.STDOUT:
            streams[2] = streams[1]
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(self._started())
        request = {"args": args, "cwd": str(cwd), "env": env, "code": code, "new_session": new_session}
        socket.send_fds(conn, [json.dumps(request).encode()], streams)
        return ZygoteProcess(conn, args)

    def run(self, args: list[str], *, cwd: Path | str, env: dict[str, str], timeout: float, code: str | None = None,
            new_session: bool = False) -> subprocess.CompletedProcess[str]:
        """``subprocess.run(..., capture_output=True, text=True, timeout=timeout)`` through the zygote."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                open(os.devnull, "rb") as nothing:
            process = self.popen(args, cwd=cwd, env=env, stdin=nothing, stdout=out, stderr=err, code=code,
                                 new_session=new_session)
            try:
                returncode = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(args, returncode, out.read().decode(errors="replace"),
                                               err.read().decode(errors="replace"))


def _fileno(stream: int | IO[Any] | None, default: int) -> int:
    if stream is None or stream == subprocess.STDOUT:
        return default
    if isinstance(stream, int):
        if stream < 0:
            raise ValueError(f"the zygote takes files, not subprocess constants ({stream})")
        return stream
    return stream.fileno()


def _wait_for_socket(path: str, process: subprocess.Popen[bytes]) -> None:
    """Blocks until the zygote listens: it renames its socket into place once every import is done."""
    while not os.path.exists(path):
        if process.poll() is not None:
            log = Path(path).with_name("log").read_text(errors="replace")
            raise RuntimeError(f"the zygote exited with {process.returncode}:\n{log[-3000:]}")
        time.sleep(0.05)


# --- the zygote process ---------------------------------------------------------------------------------------


def _preload(extra: list[str]) -> int:
    """Imports what the CLI imports, then ``extra``; returns torch's default thread count."""
    import numpy  # noqa: F401
    import torch

    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no OpenMP team before a fork: libgomp's pool does not survive one
    import fbgemm_gpu  # noqa: F401
    import polars  # noqa: F401
    import pyarrow  # noqa: F401
    import torchmetrics  # noqa: F401
    import torchrec  # noqa: F401

    import recsys.artifact  # noqa: F401
    import recsys.cli.main  # noqa: F401
    import recsys.models  # noqa: F401
    import recsys.train.trainer  # noqa: F401

    for module in extra:
        importlib.import_module(module)
    return default_threads


def _serve(socket_path: str) -> dict[str, Any]:
    """Forks a child per request until stdin closes; returns the request in each child, never in the zygote."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path + ".tmp")
    listener.listen(64)
    os.rename(socket_path + ".tmp", socket_path)  # visible only when ready
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "reap")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "parent")
    running: dict[int, socket.socket] = {}
    while True:
        for key, _ in selector.select():
            if key.data == "accept":
                conn, _ = listener.accept()
                payload, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    selector.close()
                    for fd in (listener.fileno(), wake_read, wake_write, conn.fileno(),
                               *(other.fileno() for other in running.values())):
                        os.close(fd)
                    for target, fd in enumerate(fds):
                        os.dup2(fd, target)
                    for fd in set(fds):
                        if fd > 2:
                            os.close(fd)
                    return json.loads(payload)
                for fd in fds:
                    os.close(fd)
                conn.send(json.dumps({"pid": pid}).encode())
                running[pid] = conn
            elif key.data == "reap":
                while os.read(wake_read, 4096) == 4096:
                    pass
                while running:
                    try:
                        pid, status, usage = os.wait4(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    conn = running.pop(pid, None)
                    if conn is not None:
                        try:
                            conn.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                                                  "cpu_s": usage.ru_utime + usage.ru_stime}).encode())
                        except OSError:
                            pass  # the client went away
                        conn.close()
            elif not os.read(sys.stdin.fileno(), 4096):
                for pid in running:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                os._exit(0)


def _run_command(request: dict[str, Any], default_threads: int) -> None:
    """In the child: become ``python -m recsys.cli.main ARGS`` (or ``python -c CODE ARGS``) in the request's
    directory and environment."""
    import numpy as np
    import torch

    import recsys.cli.main as cli

    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else default_threads)
    torch.seed()  # a fresh interpreter seeds both from the OS, differently each time
    np.random.seed()
    if request["code"] is not None:
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        sys.argv = ["-c", *request["args"]]
        sys.path[0] = ""
        exec(compile(request["code"], "<string>", "exec"), main.__dict__)
        return
    sys.argv = [cli.__file__, *request["args"]]
    sys.path[0] = request["cwd"]
    sys.modules["__main__"] = cli  # multiprocessing's spawn re-imports the command's module, not this one
    cli.main()


if __name__ == "__main__":
    threads = _preload(sys.argv[2:])
    gc.collect()
    gc.freeze()  # the children's collections and exit skip the preloaded heap: 0.5 s per command instead of 2
    command = _serve(sys.argv[1])
    _run_command(command, threads)
