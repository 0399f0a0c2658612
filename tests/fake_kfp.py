"""A local HTTP server with the few Kubeflow Pipelines v2beta1 REST endpoints that `tlpipe submit` and
`tlpipe schedule` call, recording every request so tests can assert what was sent."""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


class FakeKfp:
    def __init__(self, token: str | None = None):
        self.token = token  # when set, requests without "Bearer <token>" get 401
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.states: list[str] = []  # what each GET of a run answers next (the last one stays), e.g. RUNNING, FAILED
        self.run_error = ""  # the run's error message once it is FAILED
        self.fail: dict[tuple[str, str], tuple[int, str]] = {}  # (method, path) -> (status, message)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def sent(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == API + path]

    def _route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, dict]:
        if (method, path) in self.fail:
            status, message = self.fail[(method, path)]
            return status, {"error": message, "message": message, "code": status}
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/experiments" and method == "GET":
            found = list(self.experiments.values())
            if "filter" in query:
                predicate = json.loads(query["filter"][0])["predicates"][0]
                wanted = predicate.get("stringValue", predicate.get("string_value"))
                found = [e for e in found if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)}
        if path == f"{API}/experiments" and method == "POST":
            experiment = {**body, "experiment_id": str(uuid.uuid4())}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if path == f"{API}/runs" and method == "POST":
            if body.get("experiment_id") not in self.experiments:
                return 404, {"error": "experiment not found", "message": "experiment not found"}
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if path.startswith(f"{API}/runs/") and method == "GET":
            run = self.runs.get(path.rsplit("/", 1)[1])
            if run is None:
                return 404, {"error": "run not found", "message": "run not found"}
            if self.states:
                run["state"] = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return 200, {**run, **({"error": {"code": 2, "message": self.run_error}} if run["state"] == "FAILED" else {})}
        if path == f"{API}/recurringruns" and method == "POST":
            run = {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
            self.recurring_runs[run["recurring_run_id"]] = run
            return 200, run
        if path == f"{API}/recurringruns" and method == "GET":
            return 200, {"recurringRuns": list(self.recurring_runs.values()), "total_size": len(self.recurring_runs)}
        if path.startswith(f"{API}/recurringruns/") and method == "DELETE":
            if self.recurring_runs.pop(path.rsplit("/", 1)[1], None) is None:
                return 404, {"error": "recurring run not found", "message": "recurring run not found"}
            return 200, {}
        return 404, {"error": f"no route {method} {path}", "message": f"no route {method} {path}"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                query = parse_qs(url.query)
                fake.requests.append({"method": method, "path": url.path, "query": query, "body": body,
                                      "authorization": self.headers.get("Authorization")})
                if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                    status, answer = 401, {"error": "unauthenticated", "message": "unauthenticated"}
                else:
                    status, answer = fake._route(method, url.path, query, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_DELETE(self):
                self._serve("DELETE")

            def log_message(self, *args):
                pass

        return Handler
