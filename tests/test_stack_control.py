"""Stopping the local stack stops whole process groups, whatever state they are in."""

import os
import subprocess
import sys
import time

import pytest

from tlpipe import stack

pytestmark = pytest.mark.slow  # waits for processes to stop

# A server whose leader exits and leaves a child serving, as MLflow's leaves its uvicorn worker.
LEADER_THAT_LEAVES_A_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(float(sys.argv[1]))
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def start(name: str, leader_lives: float) -> tuple[subprocess.Popen, int]:
    stack.directory().mkdir(parents=True, exist_ok=True)
    leader = subprocess.Popen([sys.executable, "-c", LEADER_THAT_LEAVES_A_CHILD, str(leader_lives)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(leader.stdout.readline())
    (stack.directory() / f"{name}.pid").write_text(str(leader.pid))
    return leader, child


def test_down_stops_a_child_left_serving_after_its_leader_exited(tlpipe_home):
    leader, child = start("mlflow", 0)
    leader.wait()
    assert alive(child)
    stack.down()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child)
    assert not (stack.directory() / "mlflow.pid").exists()


def test_down_treats_a_vanished_server_as_stopped(tlpipe_home):
    (stack.directory()).mkdir(parents=True, exist_ok=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone.wait()
    (stack.directory() / "s3.pid").write_text(str(gone.pid))
    leader, child = start("mlflow", 600)
    stack.down()  # no ProcessLookupError for the vanished one; the other is stopped
    leader.wait(timeout=10)
    assert not (stack.directory() / "s3.pid").exists() and not (stack.directory() / "mlflow.pid").exists()
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(child)
