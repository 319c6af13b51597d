"""``/api/2.0/permissions/{jobs,clusters}/<id>``: accepted and remembered, never enforced.

The step launcher calls ``permissions.update`` (PUT) after submitting when its ``permissions``
config is set; the emulator has a single user, so ACLs are only stored and echoed back.
"""

from __future__ import annotations

import threading
from typing import Any

from .errors import invalid_parameter

_OBJECT_TYPES = {"jobs": "job", "clusters": "cluster"}


class PermissionStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acls: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def _body(self, kind: str, object_id: str) -> dict[str, Any]:
        acl = self._acls.get((kind, object_id), [])
        return {
            "object_id": f"/{kind}/{object_id}",
            "object_type": _OBJECT_TYPES[kind],
            "access_control_list": [
                {
                    **{k: v for k, v in entry.items() if k != "permission_level"},
                    "all_permissions": [
                        {"permission_level": entry.get("permission_level"), "inherited": False}
                    ],
                }
                for entry in acl
            ],
        }

    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._body(args["kind"], args["object_id"])

    def _acl(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        acl = args.get("access_control_list", [])
        if not isinstance(acl, list) or not all(isinstance(e, dict) for e in acl):
            raise invalid_parameter("access_control_list must be a list of objects")
        return acl

    def set(self, args: dict[str, Any]) -> dict[str, Any]:
        """PUT: replace the ACL."""
        acl = self._acl(args)
        with self._lock:
            self._acls[(args["kind"], args["object_id"])] = list(acl)
            return self._body(args["kind"], args["object_id"])

    def update(self, args: dict[str, Any]) -> dict[str, Any]:
        """PATCH: add to the ACL."""
        acl = self._acl(args)
        with self._lock:
            self._acls.setdefault((args["kind"], args["object_id"]), []).extend(acl)
            return self._body(args["kind"], args["object_id"])
