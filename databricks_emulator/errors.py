"""Databricks-shaped API errors.

Every error the emulator returns has the body ``{"error_code": ..., "message": ...}`` and the
HTTP status the real service uses for that code, because the databricks-sdk maps errors from
*both* (``error_code`` first, then the status) and dagster-databricks compares
``DatabricksError.error_code`` literally (e.g. ``"RESOURCE_DOES_NOT_EXIST"`` while polling for the
remote events file).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered to the client as a Databricks error body."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ):
        super().__init__(f"{error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers or {}
        # google.rpc.ErrorInfo reason in "details" (the Files API uses it, e.g.
        # FILES_API_DIRECTORY_IS_NOT_EMPTY, and clients key off it).
        self.reason = reason

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error_code": self.error_code, "message": self.message}
        if self.reason:
            body["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": self.reason,
                    "domain": "filesystem.databricks.com",
                }
            ]
        return body


def invalid_parameter(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def does_not_exist(message: str) -> ApiError:
    # DBFS and secrets answer 404 for a missing resource.
    return ApiError(404, "RESOURCE_DOES_NOT_EXIST", message)


def already_exists(message: str) -> ApiError:
    # DBFS answers RESOURCE_ALREADY_EXISTS with a 400 (not a 409).
    return ApiError(400, "RESOURCE_ALREADY_EXISTS", message)


def run_does_not_exist(run_id: Any) -> ApiError:
    # The Jobs service does NOT use RESOURCE_DOES_NOT_EXIST for an unknown run: it answers
    # 400 INVALID_PARAMETER_VALUE "Run <id> does not exist", which the SDK re-maps to its
    # ResourceDoesNotExist exception class via an override keyed on this exact message.
    return ApiError(400, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist")


def cluster_does_not_exist(cluster_id: Any) -> ApiError:
    # Same pattern as runs: 400 INVALID_PARAMETER_VALUE "Cluster <id> does not exist".
    return ApiError(400, "INVALID_PARAMETER_VALUE", f"Cluster {cluster_id} does not exist")


def serverless_disabled() -> ApiError:
    # A workspace without serverless compute for jobs (emulator: --no-serverless).
    return ApiError(
        400,
        "FEATURE_DISABLED",
        "Serverless compute is not enabled for this workspace. Specify a cluster "
        "(existing_cluster_id or new_cluster) for every task.",
    )
