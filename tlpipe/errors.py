"""The one exception type for user mistakes: bad input, bad parameters, unreachable services.

A TlpipeError carries one sentence that names the bad thing and what would be right. Steps and the
CLI print that sentence and exit non-zero instead of showing a traceback.
"""

import functools
import os
import sys


class TlpipeError(Exception):
    """A problem the user can fix; str(error) is the one sentence they see."""


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


def as_user_error(error: Exception) -> TlpipeError | None:
    """The error as the one sentence a user sees (a TlpipeError, or an MLflow refusal), or None for a bug."""
    return error if isinstance(error, TlpipeError) else refusal(error)


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
