"""The one exception type for user mistakes: bad input, bad parameters, unreachable services.

A TlpipeError carries one sentence that names the bad thing and what would be right. Steps and the
CLI print that sentence and exit non-zero instead of showing a traceback.
"""

import errno
import functools
import os
import re
import sys


class TlpipeError(Exception):
    """A problem the user can fix; str(error) is the one sentence they see."""


def did_you_mean(value: str, choices) -> str:
    """" did you mean 'x'?" for the choice `value` was likely meant as (another case of it, or a close
    spelling), or "" when none is close."""
    import difflib

    by_lower = {c.lower(): c for c in choices}  # another case of a choice matches it exactly
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=1)
    return f" did you mean '{by_lower[close[0]]}'?" if close else ""


# Set by the local runner so that it can repeat the failing step's sentence at the end of a run.
ERROR_FILE_ENV = "TLPIPE_ERROR_FILE"


def refusal(error: Exception) -> TlpipeError | None:
    """The one sentence for an MLflow server refusing a request (no or wrong credentials, or a user who
    may only read), or None for any other error. Told apart by MLflow's error code, without importing it."""
    code = getattr(error, "error_code", "")
    if code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "a client without MLFLOW_TRACKING_USERNAME"
    reason = str(getattr(error, "message", error)).strip().splitlines()[0]
    return TlpipeError(f"the MLflow tracking server refused a request of {user} ({reason}); writing runs and moving "
                       "the registry's aliases takes the pipelines' credentials (MLFLOW_TRACKING_USERNAME/_PASSWORD).")


def disk_full(error: Exception) -> TlpipeError | None:
    """The one sentence for a write that found its disk (or quota) full, or None for any other error."""
    if not isinstance(error, OSError) or error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = f" writing {error.filename}" if error.filename else ""
    return TlpipeError(f"no space left on the disk{where} ({error.strerror}); free some or point TLPIPE_HOME "
                       "(or the path given) at a disk with room.")


_MLFLOW_REQUEST = re.compile(r"API request to (\S+?)/(?:api|ajax-api)/\S* failed with exception (.*)", re.S)
_BOTO_OUTAGES = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError")


def outage(error: Exception) -> TlpipeError | None:
    """The one sentence for a service that stopped answering (after its client's bounded retries): the
    MLflow tracking server or an S3 endpoint, named; None for any other error."""
    if type(error).__name__ in _BOTO_OUTAGES:
        return TlpipeError(f"the S3 endpoint stopped answering ({error}); is it running, and is AWS_ENDPOINT_URL_S3 "
                           "right?")
    found = _MLFLOW_REQUEST.search(str(getattr(error, "message", "")))
    if found is None:
        return None
    causes = ("Connection refused", "Read timed out", "Name or service not known", "Connection reset")
    cause = next((c.lower() for c in causes if c in found.group(2)), found.group(2)[:200])
    return TlpipeError(f"the MLflow tracking server {found.group(1)} stopped answering ({cause}, after retries "
                       "for about a minute); is it running, and is MLFLOW_TRACKING_URI right?")


def as_user_error(error: Exception) -> TlpipeError | None:
    """The error as the one sentence a user sees (a TlpipeError, an MLflow refusal, a full disk, a service
    that stopped answering), or None for a bug."""
    if isinstance(error, TlpipeError):
        return error
    return refusal(error) or disk_full(error) or outage(error)


def exit_on_user_error(func):
    """Turns a TlpipeError raised by a step (or an MLflow refusal) into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as error:
            user_error = as_user_error(error)
            if user_error is None:
                raise
            message = str(user_error)
            error_file = os.environ.get(ERROR_FILE_ENV)
            if error_file:
                with open(error_file, "w", encoding="utf-8") as f:
                    f.write(message)
            print(f"tlpipe: error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper
