"""Fault injection for resilience tests: lost submit responses and throttling/unavailability.

* ``drop_submit_responses=N``: the next N ``jobs/runs/submit`` calls are fully processed (the run
  IS created and starts) but the connection is then closed without any response -- what a
  client sees when a load balancer drops a reply. A retry with the same ``idempotency_token``
  must get the same ``run_id`` back; without a token it creates a second run.
* ``unavailable_after_submit=N``: the next N ``jobs/runs/submit`` calls are fully processed (the
  run IS created) and then answered ``503 TEMPORARILY_UNAVAILABLE`` -- a gateway that gave up
  on the answer. A client that retries it must send the same ``idempotency_token``.
* ``http_429=N`` / ``http_503=N``: the next N matching requests are answered, before any work
  is done, as Databricks throttles (``429 REQUEST_LIMIT_EXCEEDED``) or is briefly unavailable
  (``503 TEMPORARILY_UNAVAILABLE``), with a ``Retry-After: <retry_after_seconds>`` header, or
  none when ``retry_after_seconds`` is None (Databricks sends both kinds).
  ``path_prefix`` restricts which requests count, segment by segment
  (``/api/2.2/jobs/runs/get`` matches ``runs/get`` but not ``runs/get-output``;
  ``/api/2.0/fs/files/Volumes/main`` matches every file below that folder); ``method``
  restricts them to one HTTP method.

Every fault served is recorded (:meth:`FaultInjector.served`): when, on which call, what status
and ``Retry-After`` -- so tests can check that each call kind met its faults, and how long a
client waited between its attempts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ApiError

THROTTLED_MESSAGE = "Too many requests. Please try again later or try a faster operation."
UNAVAILABLE_MESSAGE = "The service is temporarily unavailable. Please try again later."


@dataclass
class _StatusFault:
    status: int
    remaining: int
    path_prefix: str | None
    method: str | None
    retry_after_seconds: int | None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path_prefix is None or path_under(path, self.path_prefix)


@dataclass(frozen=True)
class ServedFault:
    """One fault as the client met it."""

    at: float  # time.monotonic() in the emulator's process
    call: str  # the route name, as in stats()["api_calls"]
    method: str
    path: str
    status: int
    retry_after: int | None


def path_under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or lies below it (whole path segments only)."""
    if not path.startswith(prefix):
        return False
    return prefix.endswith("/") or len(path) == len(prefix) or path[len(prefix)] == "/"


def status_error(status: int, retry_after_seconds: int | None) -> ApiError:
    """The error body and headers Databricks answers a throttled or unavailable request with."""
    headers = {} if retry_after_seconds is None else {"Retry-After": str(retry_after_seconds)}
    if status == 429:
        return ApiError(429, "REQUEST_LIMIT_EXCEEDED", THROTTLED_MESSAGE, headers)
    return ApiError(503, "TEMPORARILY_UNAVAILABLE", UNAVAILABLE_MESSAGE, headers)


class FaultInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drop_submit_responses = 0
        self._unavailable_after_submit = 0
        self._status_faults: list[_StatusFault] = []
        self._served: list[ServedFault] = []

    def inject(
        self,
        *,
        drop_submit_responses: int = 0,
        unavailable_after_submit: int = 0,
        http_429: int = 0,
        http_503: int = 0,
        path_prefix: str | None = None,
        method: str | None = None,
        retry_after_seconds: int | None = 1,
    ) -> None:
        """Add faults (they accumulate with already pending ones, served in the order given)."""
        counts = (drop_submit_responses, unavailable_after_submit, http_429, http_503)
        if min(counts) < 0 or (retry_after_seconds is not None and retry_after_seconds < 0):
            raise ValueError("fault counts and retry_after_seconds must be >= 0")
        if method is not None and method.upper() not in (
            "GET",
            "HEAD",
            "POST",
            "PUT",
            "PATCH",
            "DELETE",
        ):
            raise ValueError(f"method must be an HTTP method, got {method!r}")
        with self._lock:
            self._drop_submit_responses += int(drop_submit_responses)
            self._unavailable_after_submit += int(unavailable_after_submit)
            for status, count in ((429, http_429), (503, http_503)):
                if count:
                    self._status_faults.append(
                        _StatusFault(
                            status,
                            int(count),
                            path_prefix,
                            method.upper() if method else None,
                            None if retry_after_seconds is None else int(retry_after_seconds),
                        )
                    )

    def clear(self) -> None:
        """Drop pending faults (the record of served ones stays)."""
        with self._lock:
            self._drop_submit_responses = 0
            self._unavailable_after_submit = 0
            self._status_faults.clear()

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {
                "drop_submit_responses": self._drop_submit_responses,
                "unavailable_after_submit": self._unavailable_after_submit,
                "http_429": sum(f.remaining for f in self._status_faults if f.status == 429),
                "http_503": sum(f.remaining for f in self._status_faults if f.status == 503),
            }

    def served(self) -> list[dict[str, Any]]:
        """Every status fault served so far, oldest first (see :class:`ServedFault`)."""
        with self._lock:
            return [asdict(fault) for fault in self._served]

    def take_status_fault(self, method: str, path: str, call: str) -> ApiError | None:
        """The error to answer instead of handling the request, consuming one injected fault."""
        with self._lock:
            for fault in self._status_faults:
                if fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    self._status_faults = [f for f in self._status_faults if f.remaining > 0]
                    self._served.append(
                        ServedFault(
                            time.monotonic(),
                            call,
                            method,
                            path,
                            fault.status,
                            fault.retry_after_seconds,
                        )
                    )
                    return status_error(fault.status, fault.retry_after_seconds)
        return None

    def take_drop_submit_response(self) -> bool:
        with self._lock:
            if self._drop_submit_responses > 0:
                self._drop_submit_responses -= 1
                return True
        return False

    def take_unavailable_after_submit(self) -> ApiError | None:
        with self._lock:
            if self._unavailable_after_submit > 0:
                self._unavailable_after_submit -= 1
                return status_error(503, None)
        return None
