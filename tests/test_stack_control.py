"""The local stack's process control: the ports it takes, waiting for its servers, and stopping whole
process groups whatever state they are in."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tlpipe import stack
from tlpipe.errors import TlpipeError

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


@pytest.mark.slow  # waits for processes to stop
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


@pytest.mark.slow
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


def test_the_stack_takes_distinct_ports_that_bind_0_never_hands_out(tlpipe_home):
    """Ports from the kernel's ephemeral range go to any program's bind(0) or outgoing connection, another
    test's server included, between the stack choosing one and its server binding it."""
    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ports = list(stack.config()["ports"].values())
    assert len(set(ports)) == len(ports) == len(stack.SEAWEED_PORTS) + 1
    assert all(not low <= port <= high for port in ports)


def test_a_server_that_is_not_running_moves_off_a_port_another_program_took(tlpipe_home):
    cfg = stack.config()
    taken = cfg["ports"]["mlflow"]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        stack._take_free_ports(cfg)
        saved = json.loads((stack.directory() / "stack.json").read_text())["ports"]
    assert saved["mlflow"] != taken and saved["mlflow"] == cfg["ports"]["mlflow"]
    assert {k: v for k, v in saved.items() if k != "mlflow"} == {k: v for k, v in cfg["ports"].items() if k != "mlflow"}
    assert len(set(saved.values())) == len(saved)


class _Refuses(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(400)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_another_program_answering_on_mlflows_port_is_not_taken_for_mlflow(tlpipe_home):
    """What a CI run met: a foreign server answered 400 on the MLflow port while MLflow, unable to bind it,
    was still starting; the wait took that for MLflow and every client then met the foreign server."""
    foreign = http.server.HTTPServer(("127.0.0.1", 0), _Refuses)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    stack.directory().mkdir(parents=True, exist_ok=True)
    starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    (stack.directory() / "mlflow.pid").write_text(str(starting.pid))
    try:
        reaper = threading.Thread(target=starting.wait, daemon=True)  # so that its exit shows as gone
        reaper.start()
        with pytest.raises(TlpipeError, match="exited while starting"):
            stack._wait("mlflow", f"http://127.0.0.1:{foreign.server_port}/health", 30, any_answer=False)
    finally:
        foreign.shutdown()
        starting.kill()
