"""Fault injection for resilience tests: lost submit responses and throttling/unavailability.

* ``drop_submit_responses=N``: the next N ``jobs/runs/submit`` calls are fully processed (the run
  IS created and starts) but the connection is then closed without any response -- what a
  client sees when a load balancer drops a reply. A retry with the same ``idempotency_token``
  must get the same ``run_id`` back; without a token it creates a second run.
* ``http_429=N`` / ``http_503=N``: the next N matching requests are answered with
  ``429 REQUEST_LIMIT_EXCEEDED`` / ``503 TEMPORARILY_UNAVAILABLE`` and a ``Retry-After`` header,
  before any work is done. ``path_prefix`` restricts which requests count (e.g.
  ``/api/2.2/jobs/runs/get``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .errors import ApiError


@dataclass
class _StatusFault:
    status: int
    remaining: int
    path_prefix: str | None
    retry_after_seconds: int


class FaultInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drop_submit_responses = 0
        self._status_faults: list[_StatusFault] = []

    def inject(
        self,
        *,
        drop_submit_responses: int = 0,
        http_429: int = 0,
        http_503: int = 0,
        path_prefix: str | None = None,
        retry_after_seconds: int = 1,
    ) -> None:
        """Add faults (they accumulate with already pending ones)."""
        if min(drop_submit_responses, http_429, http_503, retry_after_seconds) < 0:
            raise ValueError("fault counts and retry_after_seconds must be >= 0")
        with self._lock:
            self._drop_submit_responses += int(drop_submit_responses)
            for status, count in ((429, http_429), (503, http_503)):
                if count:
                    self._status_faults.append(
                        _StatusFault(status, int(count), path_prefix, int(retry_after_seconds))
                    )

    def clear(self) -> None:
        with self._lock:
            self._drop_submit_responses = 0
            self._status_faults.clear()

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {
                "drop_submit_responses": self._drop_submit_responses,
                "http_429": sum(f.remaining for f in self._status_faults if f.status == 429),
                "http_503": sum(f.remaining for f in self._status_faults if f.status == 503),
            }

    def take_status_fault(self, path: str) -> ApiError | None:
        """The error to answer instead of handling ``path``, consuming one injected fault."""
        with self._lock:
            for fault in self._status_faults:
                if fault.remaining > 0 and (
                    fault.path_prefix is None or path.startswith(fault.path_prefix)
                ):
                    fault.remaining -= 1
                    self._status_faults = [f for f in self._status_faults if f.remaining > 0]
                    headers = {"Retry-After": str(fault.retry_after_seconds)}
                    if fault.status == 429:
                        return ApiError(
                            429,
                            "REQUEST_LIMIT_EXCEEDED",
                            "Too many requests. Please try again later or try a faster operation.",
                            headers,
                        )
                    return ApiError(
                        503,
                        "TEMPORARILY_UNAVAILABLE",
                        "The service is temporarily unavailable. Please try again later.",
                        headers,
                    )
        return None

    def take_drop_submit_response(self) -> bool:
        with self._lock:
            if self._drop_submit_responses > 0:
                self._drop_submit_responses -= 1
                return True
        return False
