"""Steps die with the command that started them.

`tlpipe run` starts each step as a child process (kfp.local, through a shell), and a step's
data-parallel workers are its children in turn. Killed, even with SIGKILL, `tlpipe run` can stop none of
them, and an orphaned step would train on, holding the CPUs or the GPU. So a step started by `tlpipe
run` (which names itself in TLPIPE_PARENT_PID) watches that process and ends itself once it is gone. On
a cluster no such variable is set: a pod ends with its run.
"""

import os
import signal
import threading
import time

PARENT_ENV = "TLPIPE_PARENT_PID"


def follow_parent(every: float = 1.0) -> None:
    """Ends this process (SIGTERM to itself) within `every` seconds of the `tlpipe run` that started it."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return

    def watch() -> None:
        while True:
            try:
                os.kill(int(parent), 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:  # alive, another user's: not ours to judge
                pass
            time.sleep(every)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()
