"""Whether the tracking server can be reached with this machine's credentials, asked before a run starts."""

import os

from tlpipe import settings
from tlpipe.errors import TlpipeError
from tlpipe.tracking.runs import configure


def check_reachable() -> None:
    """Fails fast, naming the server, when the tracking server cannot be reached or refuses this
    machine's credentials (MLFLOW_TRACKING_USERNAME and _PASSWORD, or _TOKEN).

    Plain requests with a short timeout: MLflow's own client retries for minutes.
    """
    uri = settings.tracking_uri()
    if uri.startswith(("http://", "https://")):
        import base64
        import urllib.error
        import urllib.request

        base = uri.rstrip("/")
        try:
            urllib.request.urlopen(base + "/health", timeout=5)
        except urllib.error.HTTPError as error:
            raise TlpipeError(f"the MLflow tracking server at {uri} answered HTTP {error.code} to a health check.") from None
        except OSError as error:
            reason = getattr(error, "reason", error)
            raise TlpipeError(f"cannot reach the MLflow tracking server at {uri} ({reason}).") from None
        request = urllib.request.Request(base + "/api/2.0/mlflow/experiments/search?max_results=1")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if user and password:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
            request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as error:
            if error.code == 401 and request.has_header("Authorization"):
                raise TlpipeError(f"the MLflow tracking server at {uri} refused the credentials of "
                                  f"{user or 'MLFLOW_TRACKING_TOKEN'}; check MLFLOW_TRACKING_USERNAME and "
                                  "MLFLOW_TRACKING_PASSWORD.") from None
            if error.code == 401:
                raise TlpipeError(f"the MLflow tracking server at {uri} requires authentication; set "
                                  "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.") from None
            raise TlpipeError(f"the MLflow tracking server at {uri} answered HTTP {error.code} to a search.") from None
        except OSError as error:
            raise TlpipeError(f"cannot reach the MLflow tracking server at {uri} ({getattr(error, 'reason', error)}).") from None
        return
    configure().search_experiments(max_results=1)
