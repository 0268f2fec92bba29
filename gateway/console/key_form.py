"""The Create key form (README "Web console"): its fields as the admin API's create body, and
the service's validation errors back onto the fields they are about. What the form cannot turn
into a body (a count that is not a number) is reported like the service's own errors, next to
its field, with everything typed kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from gateway.console.page import Form
from gateway.keys.model import rfc3339, utcnow

EXPIRY_PRESETS = {"never": None, "30": 30, "60": 60, "90": 90}  # days (SPEC's presets)
GRACE_PRESETS = {"0": "None: revoke the old key now", "3600": "1 hour", "86400": "24 hours",
                 "604800": "7 days"}
# the service's error names -> the form field shown with them
FIELD_OF = {"user_id": "owner", "user_email": "owner", "expires_at": "expires",
            "project_id": "project", "key_type": "key_type"}


@dataclass
class KeyForm:
    """What the member typed (kept when the form comes back) and the errors per field."""

    values: dict[str, Any] = field(default_factory=lambda: {
        "name": "", "description": "", "expires": "90", "environment": "live",
        "permissions": [], "owner": "", "project": "", "scopes": "", "allowed_origins": "",
        "allowed_ips": "", "rate_limit_override": "", "concurrency_limit": "",
        "key_type": "standard",
    })
    errors: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # an error about the whole form (the key limit)

    @classmethod
    def read(cls, data: Form) -> KeyForm:
        form = cls()
        for name in form.values:
            form.values[name] = data.all(name) if name == "permissions" else data.get(name)
        return form

    def body(self, owner: str | None, may_choose_owner: bool) -> dict[str, Any]:
        """The create body; unconvertible values land in ``errors``. ``owner``: forced (a
        member makes keys for themselves), else the form's choice when ``may_choose_owner``."""
        v = self.values
        body: dict[str, Any] = {"name": v["name"].strip(), "environment": v["environment"],
                                "permissions": list(v["permissions"])}
        if v["description"].strip():
            body["description"] = v["description"].strip()
        body.update(self._expiry())
        body.update(self._counts())
        body["scopes"] = self._scopes()
        body["allowed_origins"] = [o.strip() for o in v["allowed_origins"].splitlines()
                                   if o.strip()]
        body["allowed_ips"] = [a.strip() for a in (v["allowed_ips"] or "").splitlines()
                               if a.strip()]
        if v["project"]:
            body["project_id"] = v["project"]
        if owner is not None:
            body["user_id"] = owner
        elif may_choose_owner and v["owner"]:
            body["user_id"] = v["owner"]
        if may_choose_owner and v["key_type"] == "admin":
            body["key_type"] = "admin"
        return body

    def take(self, errors: dict[str, str]) -> None:
        """The service's errors (``scopes[0].operations`` …) onto the form's fields."""
        for name, message in errors.items():
            head = name.split("[", 1)[0].split(".", 1)[0]
            self.errors.setdefault(FIELD_OF.get(head, head), message)

    def _expiry(self) -> dict[str, Any]:
        choice = self.values["expires"]
        if choice not in EXPIRY_PRESETS:
            self.errors["expires"] = "choose 30, 60 or 90 days, or never"
            return {}
        days = EXPIRY_PRESETS[choice]
        return {} if days is None else {"expires_at": rfc3339(utcnow() + timedelta(days=days))}

    def _counts(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in ("rate_limit_override", "concurrency_limit"):
            text = self.values[name].strip()
            if not text:
                continue
            if not text.isascii() or not text.isdigit():
                self.errors[name] = "must be a whole number of 1 or more, or empty"
                continue
            found[name] = int(text)
        return found

    def _scopes(self) -> list[dict[str, Any]]:
        """One scope a line, ``RESOURCE: op1, op2`` (``RESOURCE`` alone: every operation)."""
        scopes = []
        for line in self.values["scopes"].splitlines():
            if not line.strip():
                continue
            resource, _, operations = line.partition(":")
            ops = [op.strip() for op in operations.split(",") if op.strip()] or ["*"]
            scopes.append({"resource_id": resource.strip(), "operations": ops})
        return scopes
