"""Run the recsys CLI, interrupting the job right after a named function returns: a crash or a pause at an exact
point of the job, so a test need not poll for a file and hope to kill the job before it moves on.

    python tests/interrupt.py --after recsys.distributed.checkpoint:save --action killpg -- train --model dlrm ...

The function is wrapped in its module (and in every loaded module that imported it by name) before
``recsys.cli.main.main`` runs: no hook in production code. Actions, on the process itself:

- ``kill``: SIGKILL (a crash: no cleanup, no ``finally``); ``killpg``: SIGKILL to its whole process group (with
  ``start_new_session=True``: the job and the helpers it spawned, as a machine losing power would);
- ``killhost``: SIGKILL to its parent (a torchrun agent, which starts each worker in a session of its own) and
  then to its own process group: one host of a multi-host job losing power;
- ``exit``: ``os._exit(86)`` (no cleanup either, but an exit status rather than a signal);
- ``sigint`` / ``sigterm``: the signal, handled as the job handles a Ctrl-C or a ``kill``;
- ``pause``: SIGSTOP; the job stays stopped (holding its locks and temporary files) until the test sends
  SIGCONT. Wait for the stop with ``os.waitpid(pid, os.WUNTRACED)``, see ``wait_stopped``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ACTIONS: dict[str, Callable[[], None]] = {
    "kill": lambda: os.kill(os.getpid(), signal.SIGKILL),
    "killpg": lambda: os.killpg(os.getpgid(0), signal.SIGKILL),
    "killhost": lambda: (os.kill(os.getppid(), signal.SIGKILL), os.killpg(os.getpgid(0), signal.SIGKILL)),
    "exit": lambda: os._exit(86),
    "sigint": lambda: os.kill(os.getpid(), signal.SIGINT),
    "sigterm": lambda: os.kill(os.getpid(), signal.SIGTERM),
    "pause": lambda: os.kill(os.getpid(), signal.SIGSTOP),
}


def command(after: str, action: str, *cli_args: str, count: int = 1) -> list[str]:
    """The argv that runs ``recsys *cli_args``, interrupted with ``action`` after the ``count``-th return of
    ``after`` (``module:function``)."""
    return [sys.executable, str(SCRIPT), "--after", after, "--action", action, "--count", str(count), "--",
            *cli_args]


def run(after: str, action: str, *cli_args: str, count: int = 1, timeout: float = 600
        ) -> subprocess.CompletedProcess[str]:
    """``command(...)`` run to its end in a session of its own (``killpg`` takes it and its helpers, nothing
    else), forked from the test zygote (a fresh interpreter under ``RECSYS_TEST_FRESH=1``); output captured.
    A job that pauses needs ``command`` and a Popen: only its parent can wait for it to stop."""
    from tests.conftest import run_python

    return run_python("from tests.interrupt import main; main()", *command(after, action, *cli_args, count=count)[2:],
                      timeout=timeout, new_session=True)


def wait_stopped(process: subprocess.Popen[Any]) -> None:
    """Block until ``process`` (run with action ``pause``) has stopped itself; fail if it ended instead."""
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        process.returncode = os.waitstatus_to_exitcode(status)
        raise AssertionError(f"the job ended ({process.returncode}) before it reached the point to pause at")


def _wrap(target: str, action: Callable[[], None], count: int) -> None:
    module_name, _, name = target.partition(":")
    if not name:
        raise SystemExit(f"--after {target}: expected module:function")
    module = importlib.import_module(module_name)
    original = getattr(module, name)
    returns = 0

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal returns
        result = original(*args, **kwargs)
        returns += 1
        if returns == count:
            action()
        return result

    for loaded in list(sys.modules.values()):  # `from module import name` made copies of the reference
        if getattr(loaded, name, None) is original:
            setattr(loaded, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--after", required=True, help="module:function")
    parser.add_argument("--action", required=True, choices=sorted(ACTIONS))
    parser.add_argument("--count", type=int, default=1, help="act after this many returns")
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then the recsys command line")
    args = parser.parse_args()
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    sys.path[0] = str(SCRIPT.parents[1])  # the repository root, not tests/ (whose services/ would shadow ours)
    _wrap(args.after, ACTIONS[args.action], args.count)
    from recsys.cli.main import main as recsys_main

    sys.argv = ["recsys", *cli]
    recsys_main()


if __name__ == "__main__":
    main()
