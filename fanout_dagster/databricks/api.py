"""The Databricks REST API as both launch modes call it: throttling is ridden out.

Databricks answers `429 REQUEST_LIMIT_EXCEEDED` when a workspace's API is
throttled and `503 TEMPORARILY_UNAVAILABLE` while a service is briefly down,
with a `Retry-After` header or without one. Every call a launch mode makes
(runs/submit, get, get-output, cancel; DBFS; the Files API; the step
launcher's and Dagster Pipes' own calls) goes through one databricks-sdk
`WorkspaceClient`, so the policy lives in that client's HTTP session:

- a 429 or 503 is retried after `max(Retry-After, backoff)`, the backoff
  doubling from 1 s to at most 60 s, plus a little jitter: never sooner than
  Databricks asks, and ever more slowly while it keeps refusing;
- one call may spend at most `budget_s` (300 s, the SDK's own budget) being
  refused; then it fails with `DatabricksUnavailable`, naming the call, what
  Databricks answered and for how long.

Why not the SDK's own retries: databricks-sdk 0.60 retries these answers too,
but without Retry-After it waits a constant 1-2 s (no backoff), it honours any
Retry-After however long, and after its budget it raises a bare
`TimeoutError('Timed out after 0:05:00')` that names no call. Retrying below
the SDK, in the transport, means the SDK never sees a 429/503 to retry (its
connection-error retries stay as they are), and dagster-databricks' own calls
get the same policy without being rewritten.

Retrying a `runs/submit` is safe because both modes send an idempotency token:
Databricks answers a repeated token with the run it already started.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import requests
from databricks.sdk import WorkspaceClient
from requests.adapters import HTTPAdapter

log = logging.getLogger(__name__)

THROTTLED_STATUSES = frozenset({429, 503})
# The SDK's own pool settings (databricks/sdk/_base_client.py).
POOL_SIZE = 20


@dataclass(frozen=True)
class ThrottlePolicy:
    """How long and how often one Databricks API call is retried while refused."""

    budget_s: float = 300.0  # per call, from its first attempt
    first_delay_s: float = 1.0
    max_delay_s: float = 60.0
    jitter: float = 0.1  # up to this fraction of the delay is added at random

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        backoff = min(self.max_delay_s, self.first_delay_s * 2**attempt)
        wait = max(backoff, retry_after_s or 0.0)
        return wait * (1 + self.jitter * random.random())


class DatabricksUnavailable(RuntimeError):
    """Databricks kept refusing one API call (429/503) for the whole retry budget.

    Deliberately not a `DatabricksError`: the SDK would retry that again.
    """


class ThrottleRetryAdapter(HTTPAdapter):
    """A `requests` transport that retries 429 and 503 answers by a `ThrottlePolicy`."""

    def __init__(self, policy: ThrottlePolicy) -> None:
        super().__init__(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, pool_block=True)
        self.policy = policy

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        rewind = body_rewinder(request)
        started = time.monotonic()
        attempt = 0
        while True:
            response = super().send(request, **kwargs)
            if response.status_code not in THROTTLED_STATUSES or rewind is None:
                return response
            answer = describe_answer(response)  # reads (and so releases) the error body
            wait = self.policy.delay(attempt, retry_after(response))
            elapsed = time.monotonic() - started
            if elapsed + wait > self.policy.budget_s:
                raise DatabricksUnavailable(
                    f"Databricks API {request.method} {request.path_url}: refused "
                    f"{attempt + 1} time(s) over {elapsed:.0f}s ({answer}); gave up, as the next "
                    f"try would pass the {self.policy.budget_s:.0f}s retry budget of one call. "
                    "The workspace's API is throttled or unavailable: retry the run later, or "
                    "run fewer at once (the run queue's limits in dagster.yaml)"
                )
            log.warning(
                "Databricks API %s %s: %s; retrying in %.1fs (retry %d)",
                request.method,
                request.path_url,
                answer,
                wait,
                attempt + 1,
            )
            time.sleep(wait)
            rewind()
            attempt += 1


def body_rewinder(request: requests.PreparedRequest) -> Any:
    """A function that makes the request's body sendable again, or None if it cannot be."""
    body = request.body
    if body is None or isinstance(body, bytes | str):
        return lambda: None
    seek, tell = getattr(body, "seek", None), getattr(body, "tell", None)
    if seek is None or tell is None or not getattr(body, "seekable", lambda: False)():
        return None  # a one-shot stream: the SDK does not retry it either
    start = tell()
    return lambda: seek(start)


def retry_after(response: requests.Response) -> float | None:
    """Seconds of the Retry-After header (Databricks sends an integer), if any."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def describe_answer(response: requests.Response) -> str:
    """`429 REQUEST_LIMIT_EXCEEDED: <message>, Retry-After: 1` from an error response."""
    text = response.text[:500]
    try:
        body = json.loads(text)
        detail = f"{body.get('error_code', '')}: {body.get('message', '')}".strip(": ")
    except (ValueError, AttributeError):
        detail = text.strip()
    header = response.headers.get("Retry-After")
    return f"{response.status_code} {detail}" + (f", Retry-After: {header}" if header else "")


def ride_out_throttling(
    workspace: WorkspaceClient, policy: ThrottlePolicy | None = None
) -> WorkspaceClient:
    """Make every call of `workspace` (and of whatever shares its API client) retry 429/503."""
    # The SDK keeps its requests session on its private base client; this project pins
    # databricks-sdk, and the throttling tests fail if the attribute moves.
    session: requests.Session = workspace.api_client._api_client._session
    adapter = ThrottleRetryAdapter(policy or ThrottlePolicy())
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return workspace
