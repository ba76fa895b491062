"""What the sandbox's API modules share: requests and responses as plain values, routing, errors and paging."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

Service = Literal["keyvault", "arm", "loganalytics"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One HTTP request as an API module sees it, read once by the server."""

    service: Service
    method: str
    path: str  # Key Vault: the part after /keyvault/<host>; ARM: the whole path
    query: Mapping[str, str]  # parameter names lower-cased: ARM and Key Vault treat them case-insensitively
    body: Any
    now: datetime  # the sandbox clock when the request arrived
    base_url: str  # where this service's paths start: https://127.0.0.1:PORT[/keyvault/<host>]
    vault_host: str | None = None  # the vault a Key Vault request is for

    @property
    def api_version(self) -> str:
        return self.query.get("api-version", "")


@dataclass(slots=True)
class ApiResponse:
    """A JSON response (or an empty one when `body` is None)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[ApiRequest, "re.Match[str]"], ApiResponse]


class Router:
    """Regex routes tried in the order added; the first whose method and pattern match wins.

    Patterns match the whole path, case-insensitively (ARM paths are case-insensitive, and so are
    Key Vault's key names). Order matters: `/keys/{name}/versions` is added before `/keys/{name}/{version}`.
    """

    def __init__(self, not_found: Callable[[ApiRequest], ApiResponse]) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._not_found = not_found

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method.upper(), re.compile(pattern, re.IGNORECASE), handler))

    def dispatch(self, request: ApiRequest) -> ApiResponse:
        allowed = False
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method == request.method.upper():
                return handler(request, match)
            allowed = True
        if allowed:
            return error_response(
                request.service, 405, "MethodNotAllowed", f"The {request.method} method is not allowed."
            )
        return self._not_found(request)


# --- errors -------------------------------------------------------------------------------------------


def keyvault_error(
    status: int, code: str, message: str, *, inner_code: str | None = None, headers: dict[str, str] | None = None
) -> ApiResponse:
    """Key Vault's error body: {"error": {"code", "message", "innererror": {"code"}}}."""
    error: dict[str, Any] = {"code": code, "message": message}
    if inner_code:
        error["innererror"] = {"code": inner_code}
    return ApiResponse(status, {"error": error}, dict(headers or {}))


def arm_error(status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> ApiResponse:
    """Azure Resource Manager's error body: {"error": {"code", "message"}}."""
    return ApiResponse(status, {"error": {"code": code, "message": message}}, dict(headers or {}))


def error_response(
    service: Service,
    status: int,
    code: str,
    message: str,
    *,
    inner_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> ApiResponse:
    """The error body of `service`."""
    if service == "keyvault":
        return keyvault_error(status, code, message, inner_code=inner_code, headers=headers)
    if service == "loganalytics":
        return logs_error(status, code, message, inner_code=inner_code, headers=headers)
    return arm_error(status, code, message, headers=headers)


def logs_error(
    status: int, code: str, message: str, *, inner_code: str | None = None, headers: dict[str, str] | None = None
) -> ApiResponse:
    """The Log Analytics query API's error body: {"error": {"message", "code", "correlationId", "innererror"}}."""
    error: dict[str, Any] = {"message": message, "code": code, "correlationId": str(uuid.uuid4())}
    if inner_code:
        error["innererror"] = {"code": inner_code, "message": message}
    return ApiResponse(status, {"error": error}, dict(headers or {}))


# What each status says when a fault rule names no code or message; messages as the services word them.
DEFAULT_ERRORS: Mapping[Service, Mapping[int, tuple[str, str]]] = {
    "keyvault": {
        400: ("BadParameter", "The request is invalid."),
        401: ("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."),
        403: ("Forbidden", "The user, group or application does not have keys get permission on this key vault."),
        404: ("NotFound", "The requested resource was not found."),
        409: ("Conflict", "The request conflicts with the current state of the resource."),
        429: (
            "Throttled",
            "Request was not allowed because application is sending too many requests. "
            "Retry after the time given in the Retry-After header.",
        ),
        500: ("InternalServerError", "An internal server error occurred."),
        503: ("ServiceUnavailable", "The service is temporarily unavailable. Retry the request later."),
    },
    "loganalytics": {
        400: ("BadArgumentError", "The request had some invalid properties"),
        401: ("AuthorizationRequiredError", "Valid authentication was not provided"),
        403: (
            "InsufficientAccessError",
            "The provided credentials have insufficient access to perform the requested operation",
        ),
        404: ("WorkspaceNotFoundError", "The workspace could not be found"),
        429: ("ThrottledError", "Your request was throttled. Retry later."),
        500: ("InternalServerError", "An internal server error occurred."),
        503: ("ServiceUnavailableError", "The service is temporarily unavailable. Retry the request later."),
        504: ("GatewayTimeout", "The query did not finish within the time allowed."),
    },
    "arm": {
        400: ("BadRequest", "The request is invalid."),
        401: ("AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."),
        403: ("AuthorizationFailed", "The client does not have authorization to perform this action."),
        404: ("ResourceNotFound", "The resource was not found."),
        409: ("Conflict", "The request conflicts with the current state of the resource."),
        429: ("TooManyRequests", "The request is being throttled. Retry after the time given in Retry-After."),
        500: ("InternalServerError", "An internal server error occurred."),
        503: ("ServiceUnavailable", "The service is temporarily unavailable. Retry the request later."),
    },
}


def default_error(service: Service, status: int) -> tuple[str, str]:
    """The (code, message) `service` would most likely send with `status`."""
    return DEFAULT_ERRORS[service].get(status, ("Error", f"The request failed with status {status}."))


# --- paging -------------------------------------------------------------------------------------------


class BadSkipTokenError(ValueError):
    """A `$skiptoken` the sandbox did not issue."""


def encode_skip_token(offset: int) -> str:
    """An opaque continuation token, base64url of JSON like the services' (URL-safe, so it survives quoting)."""
    raw = json.dumps({"NextMarker": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_skip_token(token: str) -> int:
    """The offset in a token from `encode_skip_token`.

    Raises BadSkipTokenError when it is not one.
    """
    try:
        padded = token + "=" * (-len(token) % 4)
        offset = json.loads(base64.urlsafe_b64decode(padded.encode()))["NextMarker"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise BadSkipTokenError(token) from None
    if not isinstance(offset, int) or offset < 0:
        raise BadSkipTokenError(token)
    return offset


def page(
    items: Sequence[T], request: ApiRequest, size: int, token_param: str, extra: Mapping[str, str] | None = None
) -> tuple[Sequence[T], str | None]:
    """One page of `items` from the request's skip token on, and the absolute nextLink to the rest (or None).

    The nextLink points back at the sandbox and repeats `api-version`, as both services' links do.
    Raises BadSkipTokenError for a token the sandbox did not issue.
    """
    token = request.query.get(token_param.lower())
    offset = decode_skip_token(token) if token else 0
    end = offset + size
    if end >= len(items):
        return items[offset:], None
    params = {"api-version": request.api_version, token_param: encode_skip_token(end), **(extra or {})}
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params.items())
    return items[offset:end], f"{request.base_url}{request.path}?{query}"


# --- time ---------------------------------------------------------------------------------------------


def unix(t: datetime) -> int:
    """Unix seconds, as Key Vault writes times."""
    return int(t.timestamp())


def from_unix(value: object) -> datetime:
    """A datetime from Unix seconds.

    Raises ValueError when `value` is not a number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected Unix seconds, got {value!r}")
    return datetime.fromtimestamp(value, tz=UTC)


def arm_time(t: datetime) -> str:
    """ISO 8601 in UTC with a Z, as ARM writes times (2021-02-16T22:36:06.107Z)."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
