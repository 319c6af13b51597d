"""A run's Spark Connect session: named after the run, so its work can be stopped from outside.

Every run opens one session on the local Spark Connect server (orchestration/resources/spark.py),
and its id is derived from the run id. Any client of the server can attach to a
session by its id (`sc://host:port/;session_id=<uuid>`), so the run worker
health check (run_launcher.py), which knows the run id, can stop what a dead
worker left running on the server.

That matters because the server does not stop it by itself: an operation whose
client went away keeps running (Spark Connect lets a client reattach to it), and
is removed only after `spark.connect.execute.manager.detachedTimeout` (minutes).
A worker SIGKILLed in the middle of a Delta write thus commits that write
seconds later, after its run was failed and its object freed for the next run
(measured on pyspark 4.1: the commit landed 17 s after the kill).

Stopping takes two steps: interrupt every operation of the session, then wait
until each has ended. Interrupting only signals the operation's thread on the
server; the thread reports the end of the operation (OPERATION_CANCELED, or its
result) when it has unwound, and a commit it was writing is done by then, or
never. Waiting is done by reattaching to the operation and reading its stream
to the end. Then the session is released, and the server refuses any further
operation under its id.

No Dagster import: loading.py (which also runs on Databricks) uses this too.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the Connect client (and grpc) are imported where used: a
    # Databricks cluster's classic Spark may lack them.
    import grpc
    from pyspark.sql import SparkSession
    from pyspark.sql.connect.client.retries import DefaultPolicy

# How long a stop may take: an interrupted operation unwinds in milliseconds,
# unless it is in a step that does not listen (a commit being written).
STOP_TIMEOUT_S = 60.0

# What the server answers, on reattaching, for an operation that has ended (or
# is gone with its session); anything else is the operation's own end or an
# error of ours.
_ENDED = (
    "OPERATION_CANCELED",
    "INVALID_HANDLE.OPERATION_NOT_FOUND",
    "INVALID_HANDLE.OPERATION_ABANDONED",
    "INVALID_HANDLE.SESSION_NOT_FOUND",
    "INVALID_HANDLE.SESSION_CLOSED",
)
# The responses the client read are released; the server names the next one it lacks.
_POSITION_GONE = "INVALID_CURSOR.POSITION_NOT_AVAILABLE"


def run_session_id(run_id: str) -> str:
    """The Spark Connect session id of a run (a UUID, as the server requires)."""
    digest = hashlib.sha256(f"fanout_dagster run {run_id}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def session_url(base_url: str, session_id: str | None, *, token: str | None = None) -> str:
    """`sc://host:port` -> a client's URL: of that session on the server (None: the
    server names a new one), presenting `token`. With a token it is a secret: pass it
    to a client, never show it (show `base_url`).

    The token goes as the header Spark's server checks (`Authorization: Bearer`), a
    URL parameter pyspark passes on as gRPC metadata, over the plain loopback channel.
    (pyspark's own `token=` would send it as gRPC call credentials, which run a
    Python thread inside every call, where the garbage collector can finalize an old
    session whose `__del__` deadlocks pyspark 4.1.0's release thread pool.)
    """
    parameters = []
    if token is not None:
        parameters.append(f"authorization=Bearer {token}")
    if session_id is not None:
        parameters.append(f"session_id={session_id}")
    if not parameters:
        return base_url
    return f"{base_url.rstrip('/')}/;{';'.join(parameters)}"


def quick_retries() -> DefaultPolicy:
    """pyspark's default retries ride out ten minutes of an unreachable server,
    per call; a local server that is gone is gone: give up after ~15 s."""
    from pyspark.sql.connect.client.retries import DefaultPolicy

    return DefaultPolicy(max_retries=5, initial_backoff=200, backoff_multiplier=3, max_backoff=5000)


def server_listening(base_url: str) -> bool:
    """Whether anything accepts connections at `sc://host:port` (a server that is
    not running runs nothing: there is nothing to stop)."""
    address = urlsplit(base_url.replace("sc://", "http://", 1))
    try:
        with socket.create_connection((address.hostname or "127.0.0.1", address.port or 15002), 5):
            return True
    except OSError:
        return False


class NotStopped(RuntimeError):
    """The session's operations could not be confirmed ended (the server did not answer)."""


def stop_session(
    base_url: str, session_id: str, timeout_s: float = STOP_TIMEOUT_S, *, token: str | None = None
) -> int:
    """Interrupt every operation of a session, wait until each has ended, release the session.
    `token`: the server's, if it requires one (session_url).

    Returns how many operations were still running. A session the server does
    not have (the server restarted since) has none; nor has a released one (its
    worker released it at the end of its run, or an earlier stop did). Raises
    NotStopped when the server does not answer or the operations do not end
    within `timeout_s`.
    """
    from pyspark.sql.connect.client import SparkConnectClient

    client = SparkConnectClient(session_url(base_url, session_id, token=token))
    client.set_retry_policies([quick_retries()])
    try:
        interrupted = list(client.interrupt_all() or [])
        wait_until_ended(client, interrupted, timeout_s)
        client.release_session()
    except NotStopped:
        raise
    except Exception as error:
        if _condition(error) == "INVALID_HANDLE.SESSION_CLOSED":
            return 0
        raise NotStopped(f"{type(error).__name__}: {str(error).strip()[:300]}") from error
    finally:
        client.close()
    return len(interrupted)


def stop_tagged(spark: SparkSession, tag: str, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Interrupt the operations of this session that carry `tag`, and wait until each
    has ended; returns how many were running. Raises NotStopped as stop_session."""
    try:
        session: Any = spark  # a Connect session: it has a client
        interrupted = list(session.interruptTag(tag))
        wait_until_ended(session.client, interrupted, timeout_s)
    except NotStopped:
        raise
    except Exception as error:
        raise NotStopped(f"{type(error).__name__}: {str(error).strip()[:300]}") from error
    return len(interrupted)


def wait_until_ended(client: Any, operation_ids: Iterable[str], timeout_s: float) -> None:
    """Return once every operation has ended on the server: reattach to each and
    read its stream to the end (its thread sends the end when it has unwound)."""
    deadline = time.monotonic() + timeout_s
    for operation_id in operation_ids:
        _wait_until_ended(client, operation_id, deadline)


def _wait_until_ended(client: Any, operation_id: str, deadline: float) -> None:
    import grpc
    from pyspark.sql.connect.proto import base_pb2

    last_response_id = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotStopped(f"operation {operation_id} did not end in time")
        request = base_pb2.ReattachExecuteRequest(
            session_id=client._session_id,
            operation_id=operation_id,
            client_type=client._builder.userAgent,
        )
        if client._user_id:
            request.user_context.user_id = client._user_id
        if last_response_id is not None:
            request.last_response_id = last_response_id
        try:
            stream = client._stub.ReattachExecute(
                request, metadata=client._builder.metadata(), timeout=remaining
            )
            for _ in stream:  # results and progress of an operation we only wait for
                pass
            return  # the stream ended: the operation completed
        except grpc.RpcError as error:
            error_class, parameters = _error_class(error)
            if error_class == _POSITION_GONE:  # start after the response the server lacks
                last_response_id = parameters["responseId"]
                continue
            if error_class in _ENDED:
                return
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise NotStopped(f"operation {operation_id} did not end in time") from error
            if error_class is not None and not error_class.startswith("INVALID_"):
                return  # the operation ended with an error of its own
            raise


def _error_class(error: grpc.RpcError) -> tuple[str | None, dict[str, str]]:
    """Spark's error class and message parameters, from the error's details."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            parameters = json.loads(info.metadata.get("messageParameters") or "{}")
            return info.metadata.get("errorClass"), parameters
    return None, {}


def _condition(error: BaseException) -> str | None:
    """The Spark error class of a pyspark exception (None for other exceptions)."""
    get_condition = getattr(error, "getCondition", None)
    return get_condition() if callable(get_condition) else None
