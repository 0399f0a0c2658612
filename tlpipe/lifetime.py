"""Steps die with the command that started them.

`tlpipe run` starts each step as a child process (kfp.local, through a shell), and a step's
data-parallel workers are its children in turn. Killed, even with SIGKILL, `tlpipe run` can stop none of
them, and an orphaned step would train on, holding the CPUs or the GPU. So a step started by `tlpipe
run` (which names itself in TLPIPE_PARENT_PID) watches that process and ends itself once it is gone. On
a cluster no such variable is set: a pod ends with its run.

A `tlpipe run` killed with SIGKILL (or by a crash or power cut) cannot close its MLflow runs either. So
its steps name it as the runs' owner (`owner()`), and the next `tlpipe run` on this machine closes the
runs whose owner is gone (`gone()`).
"""

import os
import signal
import socket
import sys
import threading
import time

import psutil

PARENT_ENV = "TLPIPE_PARENT_PID"


def owner(parent: str | None = None) -> str:
    """The `tlpipe run` that started this step (or process `parent`) as host:pid:start time (a pid alone can
    be reused), or ""."""
    parent = parent or os.environ.get(PARENT_ENV)
    if not parent:
        return ""
    try:
        started = psutil.Process(int(parent)).create_time()
    except psutil.Error:
        started = 0.0
    return f"{socket.gethostname()}:{parent}:{started:.0f}"


def gone(run_owner: str) -> bool:
    """Whether the `tlpipe run` named by owner() has ended; False when it ran on another machine."""
    host, pid, started = run_owner.rsplit(":", 2)
    if host != socket.gethostname():
        return False
    try:
        return f"{psutil.Process(int(pid)).create_time():.0f}" != started
    except psutil.NoSuchProcess:  # a zombie included: ended, not yet reaped
        return True
    except (psutil.Error, ValueError):  # alive but not ours to inspect, or not a tlpipe owner
        return False


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


def end_within(seconds: float, sentence: str) -> threading.Timer:
    """Ends this process with exit status 130 and `sentence` in `seconds` unless the returned timer is
    cancelled: an interrupted command must end even if what it still does (closing runs on a tracking
    server, a library's thread that the interpreter waits for at exit) hangs."""
    def end() -> None:
        sys.__stderr__.write(f"tlpipe: {sentence}\n")
        sys.__stderr__.flush()
        os._exit(130)

    timer = threading.Timer(seconds, end)
    timer.daemon = True  # runs on while the interpreter waits for other threads at exit
    timer.start()
    return timer
