"""OpenAI-shaped errors: `{"error": {"message", "type", "code", "param"}}` with an HTTP status."""

from __future__ import annotations

from typing import Any

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "server_overloaded",
}


class ApiError(Exception):
    """A refusal the client should see as is: its status, message and OpenAI error code."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        error = {
            "message": self.message,
            "type": TYPES.get(self.status, "invalid_request_error"),
            "code": self.code,
            "param": self.param,
        }
        return {"error": error}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, code or "invalid_value", param)
