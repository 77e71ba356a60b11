"""``recsys serve --workers N``: a worker process ends when the ``recsys serve`` process that started it dies.

uvicorn's supervisor stops its workers when it is asked to (SIGTERM, Ctrl-C), but a
supervisor killed outright (SIGKILL, the OOM killer) asks nothing: its workers were
reparented and kept serving, holding the port, so a restart failed with "Address already
in use". Each worker therefore asks Linux for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``) and, as a fallback, watches its parent id once a second. SIGTERM is
uvicorn's orderly shutdown: stop listening, finish the requests in progress, run the
app's shutdown.

``PR_SET_PDEATHSIG`` fires when the *thread* that created the process ends; uvicorn's
supervisor (0.54) starts and restarts workers from its main thread, whose end is the
process's. The watchdog covers other platforms, and any uvicorn that would spawn from a
thread that ends early (there, the signal would come too soon, which the supervisor
handles as a worker death: it starts another).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("recsys.serve")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_WATCH_INTERVAL_S = 1.0


def exit_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` (its parent now) is gone."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (%s): the parent watchdog alone stops this worker",
                        os.strerror(ctypes.get_errno()))
    # The parent may have died before the prctl: then the signal never comes, but the parent id has changed.
    threading.Thread(target=_watch, args=(parent,), name="recsys-parent-watch", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_WATCH_INTERVAL_S)
    log.warning("the recsys serve process (pid %d) is gone: stopping this worker", parent)
    os.kill(os.getpid(), signal.SIGTERM)
