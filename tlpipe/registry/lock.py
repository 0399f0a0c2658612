"""The gate lock: one register step at a time moves a registered model's aliases."""

import contextlib
import os
import random
import threading
import time
import uuid

from mlflow.exceptions import MlflowException

from tlpipe.errors import TlpipeError

LEASE_ENV = "TLPIPE_GATE_LEASE_SECONDS"  # how long the gate lock outlives its holder's last renewal
DEFAULT_LEASE_SECONDS = 60.0


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_SECONDS))


class Lease:
    """The gate lock: a registered model that exists while a step holds it, tagged with its owner and
    the time its lease runs out. Creating a registered model is atomic in MLflow's store (SQLite or a
    tracking server alike), so exactly one step gets it. The holder renews the lease while it works; a
    waiting step breaks the lock only once the lease has lapsed (its holder died), and a holder deletes
    the lock only while it still owns it."""

    def __init__(self, client, model_name: str, seconds: float | None = None):
        self.client, self.name = client, f"{model_name}.gate-lock"
        self.seconds = seconds or lease_seconds()
        self.owner = uuid.uuid4().hex

    def acquire(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                self.client.create_registered_model(
                    self.name, tags={"owner": self.owner, "lease_until": str(time.time() + self.seconds)},
                    description="held by a tlpipe register step while it moves aliases")
                return
            except MlflowException as error:
                # The store answers a taken name by reading the holder's lock; if the holder released it
                # in between, that read says "does not exist": the lock is free, so try again.
                if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                    continue
                if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            try:
                held = self._read()
            except MlflowException:
                held = None  # the registry did not answer: wait and try again
            if held is not None and time.time() > self._until(held):
                self._break(held)
                continue
            if time.time() > deadline:
                raise TlpipeError(f"timed out waiting for the registry lock {self.name}; another register step holds it.")
            time.sleep(0.2 + random.random() * 0.3)

    def _read(self):
        """The lock as the registry holds it, or None when nobody holds it. Any other answer (an outage,
        a timeout) raises: a failed read says nothing about who holds the lock."""
        try:
            return self.client.get_registered_model(self.name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None  # released meanwhile
            raise

    def _until(self, held) -> float:
        # A lock without a lease tag was left by an older tlpipe: its lease is ten minutes from creation.
        return float(held.tags.get("lease_until", held.creation_timestamp / 1000 + 600))

    def _break(self, lapsed) -> None:
        """Deletes a lock whose lease lapsed, unless it was renewed or taken by another step meanwhile."""
        now = self._read()
        if now is not None and now.tags == lapsed.tags:
            with contextlib.suppress(MlflowException):
                self.client.delete_registered_model(self.name)

    def owned(self) -> bool:
        held = self._read()
        return held is not None and held.tags.get("owner") == self.owner

    def renew(self) -> bool:
        if not self.owned():
            return False
        self.client.set_registered_model_tag(self.name, "lease_until", str(time.time() + self.seconds))
        return True

    def check(self) -> None:
        """Raises unless this step still holds the lock: call before moving an alias."""
        if not self.owned():
            raise TlpipeError(f"this register step lost the registry lock {self.name} (its lease of {self.seconds:g} s "
                              "lapsed); nothing was moved: run register again.")

    def release(self) -> None:
        # A registry that does not answer now leaves the lock to lapse with its lease.
        with contextlib.suppress(MlflowException):
            if self.owned():
                self.client.delete_registered_model(self.name)


@contextlib.contextmanager
def gate_lock(client, model_name: str, timeout: float = 600):
    """Holds the gate lock (a Lease), renewing it every third of its lease from a background thread."""
    lease = Lease(client, model_name)
    lease.acquire(timeout)
    stop = threading.Event()

    def keep_renewing():
        # A failed read or write is retried at the next third of the lease; only another owner (or no
        # lock at all) ends the renewing.
        while not stop.wait(lease.seconds / 3):
            with contextlib.suppress(MlflowException):
                if not lease.renew():
                    return

    renewer = threading.Thread(target=keep_renewing, name="gate-lease", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join()
        lease.release()
