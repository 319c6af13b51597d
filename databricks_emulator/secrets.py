"""The workspace secret store: ``/api/2.0/secrets/*`` and the values ``dbutils.secrets`` sees.

Tasks get a snapshot of the store taken when their process starts (like a cluster reading
secrets at task start). Values are held in memory only and never logged.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from typing import Any

from .errors import already_exists, does_not_exist, invalid_parameter


class SecretStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        # scope -> key -> (value, last_updated_ms)
        self._scopes: dict[str, dict[str, tuple[bytes, int]]] = {}

    # -- Python API ----------------------------------------------------------------------------

    def set(self, scope: str, key: str, value: str | bytes) -> None:
        """Store a secret, creating the scope if needed (test convenience)."""
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        with self._lock:
            self._scopes.setdefault(scope, {})[key] = (raw, int(time.time() * 1000))

    def snapshot(self) -> dict[str, dict[str, str]]:
        """All secrets as ``{scope: {key: base64 value}}`` for a task process."""
        with self._lock:
            return {
                scope: {
                    key: base64.b64encode(raw).decode("ascii") for key, (raw, _) in keys.items()
                }
                for scope, keys in self._scopes.items()
            }

    # -- REST API ------------------------------------------------------------------------------

    @staticmethod
    def _name(body: dict[str, Any], field: str) -> str:
        value = body.get(field)
        if not isinstance(value, str) or not value:
            raise invalid_parameter(f"Missing required field: {field}")
        return value

    def _scope(self, scope: str) -> dict[str, tuple[bytes, int]]:
        keys = self._scopes.get(scope)
        if keys is None:
            raise does_not_exist(f"Scope {scope} does not exist!")
        return keys

    def create_scope(self, body: dict[str, Any]) -> dict[str, Any]:
        scope = self._name(body, "scope")
        with self._lock:
            if scope in self._scopes:
                raise already_exists(f"Scope {scope} already exists!")
            self._scopes[scope] = {}
        return {}

    def delete_scope(self, body: dict[str, Any]) -> dict[str, Any]:
        scope = self._name(body, "scope")
        with self._lock:
            self._scope(scope)
            del self._scopes[scope]
        return {}

    def list_scopes(self, _query: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            return {
                "scopes": [{"name": s, "backend_type": "DATABRICKS"} for s in sorted(self._scopes)]
            }

    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        scope = self._name(body, "scope")
        key = self._name(body, "key")
        if "string_value" in body and "bytes_value" in body:
            raise invalid_parameter("Only one of string_value and bytes_value may be set.")
        if "bytes_value" in body:
            try:
                raw = base64.b64decode(str(body["bytes_value"]), validate=True)
            except (binascii.Error, ValueError):
                raise invalid_parameter("bytes_value is not valid base64.") from None
        elif "string_value" in body:
            raw = str(body["string_value"]).encode("utf-8")
        else:
            raise invalid_parameter("One of string_value or bytes_value must be set.")
        with self._lock:
            self._scope(scope)[key] = (raw, int(time.time() * 1000))
        return {}

    def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        scope = self._name(body, "scope")
        key = self._name(body, "key")
        with self._lock:
            keys = self._scope(scope)
            if key not in keys:
                raise does_not_exist(f"Secret {key} does not exist in scope {scope}!")
            del keys[key]
        return {}

    def list(self, query: dict[str, str]) -> dict[str, Any]:
        scope = self._name(query, "scope")
        with self._lock:
            keys = self._scope(scope)
            secrets = [
                {"key": k, "last_updated_timestamp": ts} for k, (_, ts) in sorted(keys.items())
            ]
        return {"secrets": secrets} if secrets else {}

    def get(self, query: dict[str, str]) -> dict[str, Any]:
        scope = self._name(query, "scope")
        key = self._name(query, "key")
        with self._lock:
            keys = self._scope(scope)
            if key not in keys:
                raise does_not_exist(f"Secret {key} does not exist in scope {scope}!")
            raw, _ = keys[key]
        return {"key": key, "value": base64.b64encode(raw).decode("ascii")}
