"""Errors raised by the SDK.

Every error raised for an API response carries the server's stable ``code``, the ``request_id``
and, for build failures, ``error_detail`` (``.phase`` and ``.message``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class ErrorDetail:
    """Where and why a build failed."""

    phase: str
    message: str

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]]) -> Optional["ErrorDetail"]:
        if not data:
            return None
        return cls(phase=str(data.get("phase", "")), message=str(data.get("message", "")))


class NullspaceError(Exception):
    """Base class of every SDK error."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        status_code: Optional[int] = None,
        request_id: Optional[str] = None,
        build_id: Optional[str] = None,
        error_detail: Optional[ErrorDetail] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_code = status_code
        self.request_id = request_id
        self.build_id = build_id
        self.error_detail = error_detail

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ApiError(NullspaceError):
    """The API answered with an error envelope."""


class AuthenticationError(ApiError):
    """The API key is missing or invalid (HTTP 401)."""


class NotFoundError(ApiError):
    """The template or build does not exist for this caller (``*_not_found``)."""


class ConflictError(ApiError):
    """The request conflicts with the resource's state (``conflict``)."""


class BuildError(NullspaceError):
    """A template build failed, was cancelled, or was rejected.

    ``error_detail.phase`` and ``error_detail.message`` say where and why.
    """

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        if self.error_detail is None:
            self.error_detail = ErrorDetail(phase="prepare", message=message)


class InvalidRequestError(ApiError, BuildError):
    """The server rejected the request (``invalid_request``); nothing was built."""


class FileUploadError(NullspaceError):
    """The local build context could not be prepared or uploaded."""


def error_from_response(status_code: int, body: Any) -> NullspaceError:
    """The error for an API error response."""
    if not isinstance(body, Mapping):
        body = {"error": str(body), "code": "error"}
    code = str(body.get("code", "error"))
    message = str(body.get("error", f"HTTP {status_code}"))
    kwargs: dict[str, Any] = dict(
        code=code,
        status_code=status_code,
        request_id=body.get("request_id"),
        build_id=body.get("build_id"),
        error_detail=ErrorDetail.from_dict(body.get("error_detail")),
    )
    if code == "invalid_request":
        return InvalidRequestError(message, **kwargs)
    if code == "build_error":
        return BuildError(message, **kwargs)
    if code == "file_upload_error":
        return FileUploadError(message, **kwargs)
    if status_code == 401:
        return AuthenticationError(message, **kwargs)
    if code.endswith("_not_found") or status_code == 404:
        return NotFoundError(message, **kwargs)
    if code.endswith("conflict") or status_code == 409:
        return ConflictError(message, **kwargs)
    return ApiError(message, **kwargs)
