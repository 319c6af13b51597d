"""HTTP layer: routing, bearer-token check, fault injection, Databricks-shaped errors.

Routes carry the API versions real clients use (databricks-sdk 0.60: jobs on ``/api/2.2``,
clusters on ``/api/2.1``, DBFS, the Files API and secrets on ``/api/2.0``); older versions of
the same endpoints are accepted too. The Files API (``/api/2.0/fs/files``, ``/fs/directories``)
sends and answers raw bytes, so its routes are "raw" (see :mod:`.volumes`).

``/emulator/*`` is the emulator's own admin API, token-protected like the rest:

* ``GET /emulator/stats`` -- counters (see :mod:`.stats`); ``POST /emulator/stats/reset``
* ``POST /emulator/faults`` ``{"drop_submit_responses": n, "unavailable_after_submit": n,
  "http_429": n, "http_503": n, "path_prefix": "/api/...", "method": "GET",
  "retry_after_seconds": s | null}`` -- see :mod:`.faults`; ``GET /emulator/faults`` (pending),
  ``GET /emulator/faults/served``, ``POST /emulator/faults/clear``
* ``POST /emulator/secrets`` ``{"scope", "key", "value"}`` (creates the scope if needed)
* ``POST /emulator/clusters`` ``{"cluster_id", "spark_conf", "spark_env_vars", "running", ...}``
* ``POST /emulator/volumes`` ``{"name": "catalog.schema.volume"}`` (creates a Unity Catalog
  volume for the Files API and ``/Volumes`` in tasks); ``GET /emulator/volumes`` lists them
* ``GET /emulator/runs/<run_id>`` -- the ``run_page_url`` target: run JSON, state history, log tails
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import socket
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .errors import ApiError, invalid_parameter
from .volumes import RawRequest, RawResponse

if TYPE_CHECKING:
    from .emulator import DatabricksEmulator

log = logging.getLogger(__name__)


class Route:
    def __init__(
        self,
        method: str,
        pattern: str,
        name: str,
        handler: Callable[..., Any],
        raw: bool = False,
    ):
        self.method = method
        self.regex = re.compile(f"^{pattern}$")
        self.name = name  # the key used in stats["api_calls"]
        self.handler = handler
        # raw: the handler takes a RawRequest and answers a RawResponse (bytes, not JSON)
        self.raw = raw


def build_routes(emu: DatabricksEmulator) -> list[Route]:
    jobs = r"/api/2\.[012]/jobs"
    dbfs = r"/api/2\.0/dbfs"
    clusters = r"/api/2\.[01]/clusters"
    secrets = r"/api/2\.0/secrets"
    perms = r"/api/2\.0/permissions/(?P<kind>jobs|clusters)/(?P<object_id>[^/]+)"
    r = emu.runs
    d = emu.dbfs
    c = emu.clusters
    s = emu.secrets
    fs_files = r"/api/2\.0/fs/files(?P<path>/.*)"
    fs_dirs = r"/api/2\.0/fs/directories(?P<path>/.*)"
    files_routes = [
        Route(method, pattern, f"fs/{kind}/{method.lower()}", handler, raw=True)
        for pattern, kind, handler, methods in (
            (fs_files, "files", emu.files_api.files, ("GET", "HEAD", "PUT", "DELETE", "POST")),
            (fs_dirs, "directories", emu.files_api.directories, ("GET", "HEAD", "PUT", "DELETE")),
        )
        for method in methods
    ]
    return [
        *files_routes,
        Route("POST", f"{jobs}/runs/submit", "jobs/runs/submit", r.submit),
        Route("GET", f"{jobs}/runs/get", "jobs/runs/get", r.get),
        Route("GET", f"{jobs}/runs/get-output", "jobs/runs/get-output", r.get_output),
        Route("POST", f"{jobs}/runs/cancel", "jobs/runs/cancel", r.cancel),
        Route("GET", f"{jobs}/runs/list", "jobs/runs/list", r.list),
        Route("POST", f"{dbfs}/create", "dbfs/create", d.create),
        Route("POST", f"{dbfs}/add-block", "dbfs/add-block", d.add_block),
        Route("POST", f"{dbfs}/close", "dbfs/close", d.close),
        Route("POST", f"{dbfs}/put", "dbfs/put", d.put),
        Route("GET", f"{dbfs}/read", "dbfs/read", d.read),
        Route("GET", f"{dbfs}/get-status", "dbfs/get-status", d.get_status),
        Route("GET", f"{dbfs}/list", "dbfs/list", d.list),
        Route("POST", f"{dbfs}/mkdirs", "dbfs/mkdirs", d.mkdirs),
        Route("POST", f"{dbfs}/delete", "dbfs/delete", d.delete),
        Route("POST", f"{dbfs}/move", "dbfs/move", d.move),
        Route("GET", f"{clusters}/get", "clusters/get", c.get_api),
        Route("GET", f"{clusters}/list", "clusters/list", c.list_api),
        Route("POST", f"{clusters}/start", "clusters/start", c.start_api),
        Route("POST", f"{secrets}/scopes/create", "secrets/scopes/create", s.create_scope),
        Route("POST", f"{secrets}/scopes/delete", "secrets/scopes/delete", s.delete_scope),
        Route("GET", f"{secrets}/scopes/list", "secrets/scopes/list", s.list_scopes),
        Route("POST", f"{secrets}/put", "secrets/put", s.put),
        Route("POST", f"{secrets}/delete", "secrets/delete", s.delete),
        Route("GET", f"{secrets}/list", "secrets/list", s.list),
        Route("GET", f"{secrets}/get", "secrets/get", s.get),
        Route("GET", perms, "permissions/get", emu.permissions.get),
        Route("PUT", perms, "permissions/set", emu.permissions.set),
        Route("PATCH", perms, "permissions/update", emu.permissions.update),
        # WorkspaceClient.current_user.me() is the usual "does my host/token work" probe.
        Route("GET", r"/api/2\.0/preview/scim/v2/Me", "scim/Me", emu.current_user),
        # -- admin API ------------------------------------------------------------------------
        Route("GET", r"/emulator/stats", "emulator/stats", lambda _q: emu.stats()),
        Route("POST", r"/emulator/stats/reset", "emulator/stats/reset", emu.admin_reset_stats),
        Route("GET", r"/emulator/faults", "emulator/faults", lambda _q: emu.faults.pending()),
        Route(
            "GET",
            r"/emulator/faults/served",
            "emulator/faults/served",
            lambda _q: {"served": emu.faults.served()},
        ),
        Route("POST", r"/emulator/faults", "emulator/faults", emu.admin_inject_faults),
        Route("POST", r"/emulator/faults/clear", "emulator/faults/clear", emu.admin_clear_faults),
        Route("POST", r"/emulator/secrets", "emulator/secrets", emu.admin_set_secret),
        Route("POST", r"/emulator/clusters", "emulator/clusters", emu.admin_define_cluster),
        Route("POST", r"/emulator/volumes", "emulator/volumes", emu.admin_create_volume),
        Route("GET", r"/emulator/volumes", "emulator/volumes", emu.admin_list_volumes),
        Route("GET", r"/emulator/runs/(?P<run_id>\d+)", "emulator/runs", emu.admin_run_page),
    ]


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emu: DatabricksEmulator):
        self.emu = emu
        self.routes = build_routes(emu)
        self.stopped = False
        super().__init__(address, RequestHandler)


class _DropResponse(Exception):
    """Close the connection without answering (fault injection)."""


class RequestHandler(BaseHTTPRequestHandler):
    server: EmulatorHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's requests session expects
    timeout = 300  # drop idle keep-alive connections eventually
    server_version = "DatabricksEmulator/1.0"

    # Never let http.server print request lines: keep the console quiet and tokens out of logs.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    # -- plumbing --------------------------------------------------------------------------------

    def _send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        # A HEAD answer has headers only (the error is in the status).
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_raw(self, response: RawResponse) -> None:
        self.send_response(response.status)
        headers = dict(response.headers)
        if response.status != 204:
            headers.setdefault("Content-Length", str(len(response.body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and response.status != 204 and response.body:
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _authorized(self) -> ApiError | None:
        header = self.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return ApiError(
                401,
                "UNAUTHENTICATED",
                "Credential was not sent or was of an unsupported type for this API.",
            )
        if not hmac.compare_digest(presented.strip().encode(), self.server.emu.token.encode()):
            return ApiError(401, "UNAUTHENTICATED", "Invalid access token.")
        return None

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path if url.path.startswith("/api/2.0/fs/") else (url.path.rstrip("/") or "/")
        raw_body = self._read_body()  # always drain it so keep-alive stays in sync
        emu = self.server.emu
        if self.server.stopped:
            # A pooled keep-alive connection outlived stop(): answer nothing more.
            self.close_connection = True
            self._send_json(
                503,
                {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "The emulator has stopped."},
            )
            return
        try:
            auth_error = self._authorized()
            if auth_error is not None:
                raise auth_error
            route, params = self._route(method, path)
            emu.stats_recorder.api_call(route.name if route else "unknown")
            if path.startswith("/api/"):
                fault = emu.faults.take_status_fault(
                    method, path, route.name if route else "unknown"
                )
                if fault is not None:
                    emu.stats_recorder.fault(f"http_{fault.status}")
                    raise fault
            if route is None:
                raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
            if route.raw:
                request = RawRequest(
                    method=method,
                    path=params.get("path", "/"),
                    query={
                        k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()
                    },
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=raw_body,
                )
                self._send_raw(route.handler(request))
                return
            args = self._arguments(url.query, raw_body)
            args.update(params)
            result = route.handler(args)
            if route.name == "jobs/runs/submit":
                if emu.faults.take_drop_submit_response():
                    emu.stats_recorder.fault("drop_submit_response")
                    raise _DropResponse
                unavailable = emu.faults.take_unavailable_after_submit()
                if unavailable is not None:
                    emu.stats_recorder.fault("unavailable_after_submit")
                    raise unavailable
            self._send_json(200, result)
        except _DropResponse:
            # The run exists; the client just never hears about it.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except ApiError as err:
            self._send_json(err.status, err.body(), err.headers)
        except Exception:  # noqa: BLE001 - answer like the service would, keep serving
            log.exception("emulator error on %s %s", method, path)
            self._send_json(
                500, {"error_code": "INTERNAL_ERROR", "message": "Internal error in the emulator."}
            )

    def _route(self, method: str, path: str) -> tuple[Route | None, dict[str, str]]:
        for route in self.server.routes:
            match = route.regex.match(path)
            if match and route.method == method:
                return route, match.groupdict()
        return None, {}

    @staticmethod
    def _arguments(query: str, raw_body: bytes) -> dict[str, Any]:
        args: dict[str, Any] = {
            k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()
        }
        if raw_body.strip():
            try:
                body = json.loads(raw_body)
            except ValueError:
                raise ApiError(
                    400, "MALFORMED_REQUEST", "Invalid JSON given in the body of the request"
                ) from None
            if not isinstance(body, dict):
                raise invalid_parameter("The request body must be a JSON object")
            # Some clients send GET parameters as a JSON body; accept both.
            args.update(body)
        return args
