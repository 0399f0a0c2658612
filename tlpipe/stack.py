"""The local stack: a SeaweedFS S3 server and an MLflow tracking server on it, on loopback ports.

`tlpipe stack up|down|status|env` (scripts/stack). Everything lives under $TLPIPE_HOME/stack: the S3
data, MLflow's database, logs, process ids, and stack.env with the standard variables that point
tlpipe (and any other S3 or MLflow client) at the stack. Ports and credentials are chosen on the
first `up` and kept, so stopping and starting the stack keeps its data and its addresses.

The MLflow server runs with MLflow's authentication (the basic-auth app), as the chart's does: the
stack's user is its admin, everyone else may only read, and a client without the stack's credentials
gets HTTP 401.
"""

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tlpipe import settings
from tlpipe.errors import TlpipeError

BUCKET = "tlpipe"
SEAWEED_PORTS = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc"]


def directory() -> Path:
    return settings.home() / "stack"


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on the port now. SO_REUSEADDR as the servers set it: a port whose
    last connections linger in TIME_WAIT after a stop is free to them, only a listener takes it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_ports(names: list[str], avoid: frozenset[int] = frozenset()) -> dict[str, int]:
    """Distinct free loopback ports outside the kernel's ephemeral range. A port from that range (what
    bind(0) and outgoing connections get) can be handed to another program, another test's server
    included, between choosing it here and the server binding it; one outside it goes only to a server
    told to take it."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default; macOS's range (49152-65535) lies above it
    pool = range(10000, low) if low > 12000 else range(high + 1, 65536)
    chosen: dict[str, int] = {}
    pick = random.SystemRandom()
    while len(chosen) < len(names):
        port = pick.choice(pool)
        if port not in chosen.values() and port not in avoid and _port_is_free(port):
            chosen[names[len(chosen)]] = port
    return chosen


def config() -> dict:
    """The stack's ports and credentials, chosen on first use and then kept in stack.json."""
    path = directory() / "stack.json"
    cfg = json.loads(path.read_text()) if path.exists() else {}
    fresh = {
        "ports": lambda: _free_ports(SEAWEED_PORTS + ["mlflow"]),
        "access_key": lambda: "tlpipe",
        "secret_key": lambda: secrets.token_urlsafe(24),
        "mlflow_user": lambda: "tlpipe",
        "mlflow_password": lambda: secrets.token_urlsafe(24),
        "flask_secret": lambda: secrets.token_urlsafe(32),
    }
    missing = [key for key in fresh if key not in cfg]  # a stack made before a key existed gets it now
    if missing:
        cfg.update({key: fresh[key]() for key in missing})
        directory().mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg, indent=2))
        path.chmod(0o600)
    return cfg


def environment(cfg: dict) -> dict[str, str]:
    """The standard variables for clients of the stack."""
    s3 = f"http://127.0.0.1:{cfg['ports']['s3']}"
    return {
        "AWS_ACCESS_KEY_ID": cfg["access_key"],
        "AWS_SECRET_ACCESS_KEY": cfg["secret_key"],
        "AWS_ENDPOINT_URL_S3": s3,
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{cfg['ports']['mlflow']}",
        "MLFLOW_TRACKING_USERNAME": cfg["mlflow_user"],
        "MLFLOW_TRACKING_PASSWORD": cfg["mlflow_password"],
    }


def _pid(name: str) -> int | None:
    path = directory() / f"{name}.pid"
    if not path.exists():
        return None
    pid = int(path.read_text())
    try:
        os.kill(pid, 0)
        return pid
    except OSError:
        return None


def _start(name: str, command: list[str], env: dict[str, str]) -> None:
    log = open(directory() / f"{name}.log", "ab")
    # A session of its own: the server outlives this command and stops as one process group.
    process = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, **env}, start_new_session=True,
                               cwd=directory())
    (directory() / f"{name}.pid").write_text(str(process.pid))


def _wait(name: str, url: str, seconds: float, any_answer: bool) -> None:
    """Waits for the server to answer at `url`: with any HTTP status when `any_answer` (S3 refuses an
    anonymous request), else with 200 only, so that another program on the port is not taken for it."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if _pid(name) is None:
            raise TlpipeError(f"the {name} server exited while starting; see {directory() / (name + '.log')}.")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            if any_answer:
                return
            time.sleep(0.3)
        except OSError:
            time.sleep(0.3)
    raise TlpipeError(f"the {name} server did not answer at {url} within {seconds:.0f} s; see {directory() / (name + '.log')}.")


def _create_bucket(env: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                      config=Config(retries={"mode": "adaptive", "max_attempts": 10}))
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if BUCKET not in existing:
        s3.create_bucket(Bucket=BUCKET)


def _take_free_ports(cfg: dict) -> None:
    """Moves each server that is not running off any of its ports that another program took since the
    stack chose them (the stack's clients read the new ones from `stack env`)."""
    servers = {"s3": SEAWEED_PORTS, "mlflow": ["mlflow"]}
    taken = [port for server, names in servers.items() if _pid(server) is None
             for port in names if not _port_is_free(cfg["ports"][port])]
    if taken:
        cfg["ports"].update(_free_ports(taken, avoid=frozenset(cfg["ports"].values())))
        (directory() / "stack.json").write_text(json.dumps(cfg, indent=2))


def up() -> dict[str, str]:
    cfg = config()
    _take_free_ports(cfg)
    env = environment(cfg)
    ports = cfg["ports"]
    data = directory() / "s3-data"
    data.mkdir(parents=True, exist_ok=True)
    if _pid("s3") is None:
        identities = {"identities": [{"name": "tlpipe", "credentials": [
            {"accessKey": cfg["access_key"], "secretKey": cfg["secret_key"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        s3_config = directory() / "s3-identities.json"
        s3_config.write_text(json.dumps(identities))
        s3_config.chmod(0o600)
        weed = Path(sys.executable).parent / "weed"
        flags = [f"-{name.replace('.grpc', '.port.grpc') if '.grpc' in name else name + '.port'}={ports[name]}"
                 for name in SEAWEED_PORTS if name != "s3"]
        # Volumes as many as fit the free disk (-volume.max=0) at 1 GB each: at weed's default 30 GB a disk
        # with less than 60 GB free has no volume to grow a bucket into, and every PUT fails.
        _start("s3", [str(weed), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-volume.max=0",
                      "-master.volumeSizeLimitMB=1024", "-master.telemetry=false",
                      "-s3", f"-s3.port={ports['s3']}", f"-s3.config={s3_config}", "-s3.port.iceberg=0",
                      "-s3.port.lance=0", *flags], {})
    _wait("s3", env["AWS_ENDPOINT_URL_S3"], 60, any_answer=True)
    _create_bucket(env)
    if _pid("mlflow") is None:
        auth = directory() / "mlflow-auth.ini"
        auth.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{directory() / 'mlflow-auth.db'}\n"
                        f"admin_username = {cfg['mlflow_user']}\n")
        server_env = {**env, "MLFLOW_AUTH_CONFIG_PATH": str(auth), "MLFLOW_AUTH_ADMIN_PASSWORD": cfg["mlflow_password"],
                      "MLFLOW_FLASK_SERVER_SECRET_KEY": cfg["flask_secret"]}
        _start("mlflow", [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                          "--port", str(ports["mlflow"]), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{directory() / 'mlflow.db'}",
                          "--artifacts-destination", f"s3://{BUCKET}/mlartifacts"], server_env)
    _wait("mlflow", env["MLFLOW_TRACKING_URI"] + "/health", 120, any_answer=False)
    (directory() / "stack.env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    (directory() / "stack.env").chmod(0o600)  # it holds the stack's credentials
    return env


def _signal_group(group: int, signum: int) -> bool:
    """Sends `signum` to a server's whole process group; False when no process of it is left (its
    leader may be gone while a child, MLflow's uvicorn worker, still serves)."""
    try:
        os.killpg(group, signum)
        return True
    except ProcessLookupError:
        return False


def down() -> None:
    for name in ("mlflow", "s3"):
        path = directory() / f"{name}.pid"
        if not path.exists():
            continue
        group = int(path.read_text())  # the session leader's pid is its process group's id
        if _signal_group(group, signal.SIGTERM):
            for _ in range(50):
                if not _signal_group(group, 0):
                    break
                time.sleep(0.2)
            else:
                _signal_group(group, signal.SIGKILL)
        path.unlink(missing_ok=True)


def running() -> bool:
    return _pid("s3") is not None and _pid("mlflow") is not None


def activate() -> None:
    """Points this process (and the steps it starts) at the running local stack."""
    if not running():
        raise TlpipeError("the local stack is not running; start it with `scripts/stack up`.")
    os.environ.update(environment(config()))
