"""Builds the two images as `tlpipe compile` names them, and says what is in each.

The Dockerfiles' defaults pull registry bases (the CUDA PyTorch runtime, python:3.11-slim) and PyTorch's
CPU index. A machine that reaches only a package index builds the same Dockerfiles on local bases
(`local_bases`): Debian's Python 3.11 from debootstrap, and for the trainer that plus PyPI's torch wheels.
"""

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tlpipe import __version__
from tlpipe.cluster import CPU_IMAGE, DEFAULT_IMAGE
from tlpipe.errors import TlpipeError
from tlpipe.images.engine import Engine, last_line

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"trainer": REPO / "images" / "trainer" / "Dockerfile", "cpu": REPO / "images" / "cpu" / "Dockerfile"}
PYTHON_BASE = "localhost/tlpipe-base/python:3.11-bookworm"
TORCH_BASE = "localhost/tlpipe-base/torch:{torch}"
DEBIAN = "http://deb.debian.org/debian"
# Debian's Python with venv and pip, as python:3.11-slim has it; useradd comes with the minimal base.
DEBIAN_PACKAGES = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How Docker and buildah say that a base image could not be pulled.
_PULL_FAILED = re.compile(r"initializing source|pinging container registry|pull access denied|failed to resolve source "
                          r"metadata|manifest unknown|Error response from daemon: Get")
# What each image reports about itself, run inside it.
_VERSIONS = """
import json, platform, importlib.metadata as m
import torch, torchvision
torchvision.ops.nms(torch.rand(4, 4), torch.rand(4), 0.5)  # torchvision's compiled operators load with this torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "torchvision": m.version("torchvision"), "cuda": torch.version.cuda or "none",
                  "kfp": m.version("kfp"), "mlflow": m.version("mlflow"), "tlpipe": m.version("tlpipe")}))
"""


@dataclass
class Built:
    role: str  # trainer or cpu
    tag: str
    size: int  # bytes
    versions: dict[str, str]
    pip_check: str  # pip check's last line; "" when clean

    def line(self) -> str:
        v = self.versions
        return (f"{self.tag}: {self.size / 1e9:.2f} GB; python {v['python']}, torch {v['torch']}, torchvision "
                f"{v['torchvision']}, CUDA runtime {v['cuda']}, "
                f"kfp {v['kfp']}, mlflow {v['mlflow']}, tlpipe {v['tlpipe']}; pip check: "
                f"{'clean' if not self.pip_check else self.pip_check}")


def tags(registry: str = "") -> dict[str, str]:
    """The images' tags: `tlpipe compile`'s defaults, or the same names under another registry prefix."""
    if not registry:
        return {"trainer": DEFAULT_IMAGE, "cpu": CPU_IMAGE}
    return {role: f"{registry.rstrip('/')}/{default.rsplit('/', 1)[1]}"
            for role, default in (("trainer", DEFAULT_IMAGE), ("cpu", CPU_IMAGE))}


def pinned(name: str) -> str:
    """A package's version in constraints.txt (the one pin of the environment)."""
    found = re.search(rf"^{re.escape(name)}==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    if not found:
        raise TlpipeError(f"constraints.txt pins no version of {name}.")
    return found.group(1)


def revision() -> str:
    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if found.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "tlpipe", "components", "pipelines",
                            "images", "pyproject.toml", "constraints.txt"], capture_output=True, text=True).stdout
    return found.stdout.strip() + ("-dirty" if dirty.strip() else "")


def local_bases(engine: Engine, index_url: str, ca_bundle: str) -> dict[str, str]:
    """Base images made here, for machines that cannot pull the registry bases: {role: base tag}."""
    if not engine.exists(PYTHON_BASE):
        _debootstrap_python(engine)
    torch_base = TORCH_BASE.format(torch=pinned("torch"))
    print(f"tlpipe: building {torch_base} (the trainer's stand-in base: PyPI's torch, CUDA libraries included)",
          flush=True)
    engine.build(REPO / "images" / "local-base" / "Dockerfile", torch_base, REPO / "images" / "local-base",
                 {"BASE_IMAGE": PYTHON_BASE, "PIP_INDEX_URL": index_url, "TORCH_VERSION": pinned("torch"),
                  "TORCHVISION_VERSION": pinned("torchvision")}, ca_bundle)
    return {"trainer": torch_base, "cpu": PYTHON_BASE}


def _debootstrap_python(engine: Engine) -> None:
    if os.geteuid() != 0:
        raise TlpipeError("making the local Python base runs debootstrap, which needs root.")
    print(f"tlpipe: making {PYTHON_BASE} with debootstrap (Debian bookworm, Python 3.11; about a minute)", flush=True)
    with tempfile.TemporaryDirectory(prefix="tlpipe-base-") as tmp:
        root = Path(tmp) / "root"
        done = subprocess.run(["debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", "bookworm",
                               str(root), DEBIAN], capture_output=True, text=True)
        if done.returncode != 0:
            raise TlpipeError(f"debootstrap could not make the Python base "
                              f"({last_line(done.stdout + done.stderr, str(done.returncode))}).")
        engine.import_root(root, PYTHON_BASE, {"PATH": PATH, "LANG": "C.UTF-8"})


def build(engine: Engine, registry: str = "", local_base: bool = False, index_url: str = "",
          torch_index_url: str = "", ca_bundle: str = "", bases: dict[str, str] | None = None,
          roles: tuple[str, ...] = ("trainer", "cpu")) -> list[Built]:
    """Builds the images (both by default) and returns what each holds. `bases` ({role: image}) replace the
    Dockerfiles' registry bases, e.g. with a mirror's copies; `local_base` makes them here."""
    if not all(dockerfile.is_file() for dockerfile in DOCKERFILES.values()):
        raise TlpipeError(f"no Dockerfiles under {REPO / 'images'}: build the images from a checkout of tlpipe's "
                          "repository (scripts/build-images), not from an installed package.")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise TlpipeError(f"the CA bundle '{ca_bundle}' is not a file.")
    if local_base and bases:
        raise TlpipeError("give either --local-base or base images, not both.")
    index_url = index_url or "https://pypi.org/simple"
    bases = local_bases(engine, index_url, ca_bundle) if local_base else (bases or {})
    built = []
    for role in roles:
        tag = tags(registry)[role]
        args = {"PIP_INDEX_URL": index_url}
        if role in bases:
            args["BASE_IMAGE"] = bases[role]
        if role == "cpu" and (torch_index_url or local_base):
            # A local base means no PyTorch CPU index either: PyPI's torch (CUDA libraries included) stands in.
            args["TORCH_INDEX_URL"] = torch_index_url or index_url
        print(f"tlpipe: building {tag} with {engine.name} ({DOCKERFILES[role].relative_to(REPO)})", flush=True)
        try:
            engine.build(DOCKERFILES[role], tag, REPO, args, ca_bundle,
                         {"org.opencontainers.image.version": __version__,
                          "org.opencontainers.image.revision": revision()})
        except TlpipeError as error:
            if _PULL_FAILED.search(str(error)):
                raise TlpipeError(f"{str(error).rstrip('.')}; this machine cannot pull the base image: give a mirror's "
                                  "copy (--trainer-base, --cpu-base) or make the bases here (--local-base).") from None
            raise
        built.append(describe(engine, role, tag))
    return built


def describe(engine: Engine, role: str, tag: str) -> Built:
    """The image's size, the versions inside it (CUDA runtime "none": a CPU build of torch) and pip check."""
    # One container: the versions' JSON on its first line, then pip check's verdict.
    ran = engine.run(tag, ["sh", "-c", 'python -c "$0" && python -m pip check', _VERSIONS], capture=True)
    first, *rest = ran.stdout.strip().splitlines() or [""]
    if not first.startswith("{"):
        raise TlpipeError(f"{tag} cannot import its own packages: {last_line(ran.stderr)}")
    check = "" if ran.returncode == 0 else last_line("\n".join(rest) or ran.stderr)
    return Built(role, tag, engine.size(tag), json.loads(first), check)

