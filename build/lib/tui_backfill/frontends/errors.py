"""The error a control request fails with: the HTTP status that says whose problem it is (400
the request, naming the field; 404 nothing there; 409 the job's state does not allow it; 502
an outside system refused). Raised by the service, answered as JSON by the API."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body
