"""Small process, socket and lock helpers shared by the trainer, the data commands, the embedded Redis, the
service and the tests."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from recsys.errors import RecsysError


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def available_cpus() -> int:
    """The CPUs this process may really use: its affinity mask (taskset, a container's cpuset), capped by a
    cgroup CPU quota (``docker --cpus``, a Kubernetes limit), which ``os.cpu_count()`` ignores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time per period the cgroup allows (v2 ``cpu.max``, else v1 CFS), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def cpu_share(processes: int) -> int:
    """Threads for one of ``processes`` processes that share the CPUs this one may use (at least 1)."""
    return max(1, available_cpus() // max(1, processes))


def thread_policy(processes: int = 1) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for ``processes`` torch processes on this host: the CPUs the process may really use
    (not the machine's core count) shared out, unless the user set it. Applied to os.environ before torch is
    imported (libgomp reads it once, when it loads) and inherited by the workers; returns what it set.

    The wait policy stays libgomp's: a shorter spin (GOMP_SPINCOUNT=10000) and OMP_WAIT_POLICY=PASSIVE were
    measured beside a competing process (benchmarks/bench_contention.py) and lost idle speed on an AVX2 EPYC
    without a consistent gain under contention for the short spin."""
    global _threads_chosen
    chosen: dict[str, str] = {}
    if "OMP_NUM_THREADS" not in os.environ:
        chosen["OMP_NUM_THREADS"] = str(cpu_share(processes))
        _threads_chosen = True
    os.environ.update(chosen)
    return chosen


_threads_chosen = False  # thread_policy chose this process's thread count (the user did not)


def threads_chosen() -> bool:
    """Whether ``thread_policy`` chose the thread count here, so that it may be changed (``ThreadGovernor``)."""
    return _threads_chosen


class ThreadGovernor:
    """torch's thread count for a process whose count recsys chose: its ``share`` of the CPUs it may use while
    other processes leave them free, fewer while they keep some busy. On 2 cores, an OpenMP pool of 2 threads
    beside one CPU-bound process spin-waits for its descheduled peer: training kept 17-24% of its idle speed
    where one thread kept 69% (benchmarks/bench_contention.py).

    ``update`` (cheap; call it every step) samples at most every ``interval_s``: the busy time of this
    process's CPUs (/proc/stat, steal included) less this process's and its children's CPU time
    (/proc/self/stat and the children's), i.e. the cores other processes took. Threads = available CPUs less
    those cores, at most ``share``, at least 1, with a band against flapping. Call ``update`` on the thread
    that runs the torch work: the count is that thread's OpenMP setting. Off where /proc is not Linux's."""

    def __init__(self, share: int, interval_s: float = 2.0) -> None:
        self.share, self.interval_s = share, interval_s
        self.cpus = available_cpus()
        try:
            self._mask = {f"cpu{i}" for i in os.sched_getaffinity(0)}
            self._tick = os.sysconf("SC_CLK_TCK")
            self._last: tuple[float, float, float] | None = self._sample()
        except (AttributeError, OSError, ValueError):
            self._last = None

    def _sample(self) -> tuple[float, float, float]:
        """(monotonic seconds, busy CPU-seconds of our CPUs, CPU-seconds of this process and its children)."""
        busy = 0
        for line in Path("/proc/stat").read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in self._mask:  # user nice system idle iowait irq softirq steal ...
                values = [int(v) for v in fields[1:9]]
                busy += sum(values) - values[3] - values[4]
        ours = _process_ticks("self")
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                for child in (task / "children").read_text().split():
                    ours += _process_ticks(child)
        return time.monotonic(), busy / self._tick, ours / self._tick

    def update(self) -> int | None:
        """The new thread count when it changed (torch's is set), else None."""
        if self._last is None or time.monotonic() - self._last[0] < self.interval_s:
            return None
        try:
            now = self._sample()
        except (OSError, ValueError):
            return None
        elapsed = now[0] - self._last[0]
        others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / elapsed  # cores
        self._last = now
        import torch

        current = torch.get_num_threads()
        threads = governed_threads(current, others, self.cpus, self.share)
        if threads == current:
            return None
        torch.set_num_threads(threads)
        return threads


def governed_threads(current: int, others: float, cpus: int, share: int) -> int:
    """``ThreadGovernor``'s choice, with a band against flapping: a core is given up once other processes take
    3/4 of it and taken back once they leave 3/4 of it free (a VM's steal time alone reached 0.5 core here while
    nothing else ran, and a plain rounding flipped between 1 and 2 threads every 2 s)."""
    lower = max(1, min(share, cpus - math.floor(others + 0.25)))
    upper = max(1, min(share, cpus - math.floor(others + 0.75)))
    return lower if lower < current else upper if upper > current else current


def _process_ticks(pid: str) -> int:
    """utime + stime of a process (all its threads; reaped children's in cutime/cstime for ``self``), in ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14, 15 of proc(5), counted after the ")" of the name
    return ticks + (int(fields[13]) + int(fields[14]) if pid == "self" else 0)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: Path, text: str, *, private: bool = False) -> None:
    """Replace ``path`` with ``text`` in one step (a temporary sibling, fsynced, renamed over it): readers, other
    processes or hosts included, see the old file or the new one, never half of it; a crash leaves the old one.
    ``private``: readable by the owner only (0600). Raises OSError; the temporary file is gone either way."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
        try:
            if private:
                os.fchmod(fd, 0o600)  # a stale tmp file keeps its mode: O_CREAT's applies to new files only
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class OutputBusy(RecsysError):
    """Another process holds the lock on an output (a data set being prepared, a run being trained)."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on {info['host']} ({info['command']}, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block, or fail at once with a one-line ``OutputBusy``
    naming ``what`` and the holder (pid, host, command, since).

    ``flock`` locks end with the process that holds them, so a run killed with SIGKILL leaves no stale lock
    (on a shared file system, only where it supports flock). The lock file stays behind, holding the last
    holder's description; it is never deleted, as deleting it would let two processes lock two files.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RecsysError(f"{lock_file}: cannot create the lock for {what} ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputBusy(f"{what} is in use by {_holder(lock_file)}; wait for it to finish or choose "
                             "another output") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
