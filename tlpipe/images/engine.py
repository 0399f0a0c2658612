"""One interface to the container engine that builds and runs the images: Docker where an engine runs,
else buildah, which builds the same Dockerfiles and runs containers without a daemon (chroot isolation:
the host's network, no user namespace, so it works inside unprivileged sandboxes and CI machines)."""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tlpipe.errors import TlpipeError


@dataclass(frozen=True)
class Engine:
    name: str  # docker or buildah

    def build(self, dockerfile: Path, tag: str, context: Path, build_args: dict[str, str],
              ca_bundle: str = "", labels: dict[str, str] | None = None) -> None:
        """Builds `dockerfile` as `tag`; the CA bundle (a file) reaches RUN steps as the secret ca_bundle.
        `labels` are set on the image as built (both engines key their layer cache on them)."""
        command = [self.name, "build", "-f", str(dockerfile), "-t", tag]
        if self.name == "buildah":
            command[2:2] = ["--isolation", "chroot", "--layers"]
        for key, value in build_args.items():
            command += ["--build-arg", f"{key}={value}"]
        for key, value in (labels or {}).items():
            command += ["--label", f"{key}={value}"]
        if ca_bundle:
            command += ["--secret", f"id=ca_bundle,src={ca_bundle}"]
        env = {"DOCKER_BUILDKIT": "1"} if self.name == "docker" else {}
        _call([*command, str(context)], f"building {tag} from {dockerfile}", env)

    def run(self, image: str, command: list[str], user: str = "", env: dict[str, str] | None = None,
            volumes: dict[str, str] | None = None, capture: bool = False) -> subprocess.CompletedProcess:
        """`command` in a new container of `image` (its own ENV, WORKDIR and USER unless `user` is given),
        with host folders mounted (host path -> container path); the container is removed after."""
        options = []
        if user:
            options += ["--user", user]
        for key, value in (env or {}).items():
            options += ["--env", f"{key}={value}"]
        for host, inside in (volumes or {}).items():
            options += ["-v", f"{host}:{inside}"]
        output = dict(capture_output=True, text=True) if capture else {}
        if self.name == "docker":
            return subprocess.run(["docker", "run", "--rm", "--network", "host", *options, image, *command], **output)
        container = _call(["buildah", "from", "--pull=never", "--quiet", image], f"starting a container of {image}",
                          capture=True).stdout.strip()
        try:
            return subprocess.run(["buildah", "run", "--isolation", "chroot", *options, container, "--", *command],
                                  **output)
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True)

    def remove(self, image: str) -> None:
        subprocess.run([self.name, "rmi", image], capture_output=True)

    def exists(self, image: str) -> bool:
        inspect = [self.name, "image", "inspect", image] if self.name == "docker" else ["buildah", "inspect", "--type",
                                                                                          "image", image]
        return subprocess.run(inspect, capture_output=True).returncode == 0

    def size(self, image: str) -> int:
        """The image's size in bytes: all its layers, uncompressed."""
        if self.name == "docker":
            return int(_call(["docker", "image", "inspect", "-f", "{{.Size}}", image], "sizing", capture=True).stdout)
        manifest = json.loads(self._inspect(image)["Manifest"])
        return sum(layer["size"] for layer in manifest["layers"])

    def labels(self, image: str) -> dict[str, str]:
        if self.name == "docker":
            found = _call(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image], "inspecting",
                          capture=True).stdout
            return json.loads(found) or {}
        return self._inspect(image)["OCIv1"]["config"].get("Labels") or {}

    def _inspect(self, image: str) -> dict:
        return json.loads(_call(["buildah", "inspect", "--type", "image", image], f"inspecting {image}",
                                capture=True).stdout)

    def import_root(self, root: Path, tag: str, env: dict[str, str]) -> None:
        """A root filesystem (a folder) as the image `tag`, with `env` in its config."""
        tarball = root.with_suffix(".tar")
        _call(["tar", "-C", str(root), "-cf", str(tarball), "."], "packing the root filesystem")
        try:
            if self.name == "docker":
                changes = [arg for key, value in env.items() for arg in ("--change", f"ENV {key}={value}")]
                _call(["docker", "import", *changes, str(tarball), tag], f"importing {tag}")
                return
            container = _call(["buildah", "from", "scratch"], "starting an empty image", capture=True).stdout.strip()
            try:
                _call(["buildah", "add", "--quiet", container, str(tarball), "/"], f"adding the root filesystem to {tag}")
                for key, value in env.items():
                    _call(["buildah", "config", "--env", f"{key}={value}", container], "configuring")
                _call(["buildah", "commit", "--quiet", container, tag], f"committing {tag}")
            finally:
                subprocess.run(["buildah", "rm", container], capture_output=True)
        finally:
            tarball.unlink(missing_ok=True)


def find(name: str = "") -> Engine:
    """The engine named (docker or buildah), or Docker when an engine answers, else buildah."""
    if name:
        if name not in ("docker", "buildah"):
            raise TlpipeError(f"engine '{name}' is not docker or buildah.")
        if not shutil.which(name):
            raise TlpipeError(f"{name} is not installed.")
        return Engine(name)
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return Engine("docker")
    if shutil.which("buildah"):
        return Engine("buildah")
    raise TlpipeError("neither a Docker engine nor buildah is available: start Docker, or install buildah "
                      "(Debian and Ubuntu: apt-get install buildah), which needs no daemon.")


def _call(command: list[str], doing: str, env: dict[str, str] | None = None,
          capture: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env={**os.environ, **(env or {})}, text=True,
                            capture_output=capture, stderr=subprocess.PIPE if not capture else None)
    if result.returncode != 0:
        raise TlpipeError(f"{doing} failed ({command[0]} exited {result.returncode}: "
                          f"{last_line(result.stderr, 'see its output above')}).")
    return result


def last_line(text: str | None, otherwise: str = "no output") -> str:
    """A command's last non-empty line of output: where tools put the reason they failed."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else otherwise
