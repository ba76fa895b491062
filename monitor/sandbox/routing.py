"""How the sandbox answers one request: classify it (ARM or Key Vault, which vault), then in order: a
vault that does not exist now resets the connection, a request without a bearer token gets the service's
401, fault rules, the per-vault rate limit, and finally the API modules; each request is logged."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import time
import uuid

from aiohttp import web

from monitor.sandbox.arm_api import ArmApi
from monitor.sandbox.clock import SandboxClock
from monitor.sandbox.faults import FaultRule, Faults, RequestInfo, forbidden_message
from monitor.sandbox.keyvault_api import KeyVaultApi
from monitor.sandbox.logs_api import LogsApi
from monitor.sandbox.requestlog import Outcome, RequestLog, RequestRecord
from monitor.sandbox.state import SandboxState, VaultInfo
from monitor.sandbox.wire import ApiRequest, ApiResponse, Service, default_error, error_response

log = logging.getLogger("monitor.sandbox.server")  # the name it had, so log filters keep matching
KEYVAULT_PREFIX = "/keyvault/"
LOGS_PREFIX = "/loganalytics"
_RESOURCE_GRAPH = re.compile(r"^/providers/Microsoft\.ResourceGraph/resources/?$", re.IGNORECASE)
_ARM_VAULT = re.compile(r"/providers/Microsoft\.KeyVault/(?:vaults|managedHSMs)/([^/]+)", re.IGNORECASE)


def _seconds(value: float) -> str:
    """A Retry-After value: whole seconds as Key Vault sends them, fractions only when asked for."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


class SandboxRequests:
    """The request half of Sandbox: what it needs of the server it is part of, and the handler."""

    clock: SandboxClock
    state: SandboxState
    faults: Faults
    requests: RequestLog
    _keyvault: KeyVaultApi
    _arm: ArmApi
    logs: LogsApi
    _stopping: asyncio.Event | None

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _classify(self, request: web.Request) -> tuple[RequestInfo, VaultInfo | None, str]:
        """(what fault rules match on, the vault it is for, this service's base URL)."""
        path = request.path
        next_page = any(name.lower() == "$skiptoken" for name in request.query)
        if path.startswith(KEYVAULT_PREFIX):
            host, _, rest = path[len(KEYVAULT_PREFIX) :].partition("/")
            info = self.state.vault_by_host(host)
            base = f"{self.url}{KEYVAULT_PREFIX}{host}"
            return RequestInfo("keyvault", host.lower(), request.method, "/" + rest, next_page), info, base
        if path == LOGS_PREFIX or path.startswith(LOGS_PREFIX + "/"):
            rest = path[len(LOGS_PREFIX) :] or "/"
            return RequestInfo("loganalytics", None, request.method, rest, next_page), None, f"{self.url}{LOGS_PREFIX}"
        named = _ARM_VAULT.search(path)
        info = self.state.vault_by_name(named[1]) if named else None
        return RequestInfo("arm", info.host if info else None, request.method, path, next_page), info, self.url

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        received = time.time()
        arrived = self.clock.now()
        info, vault, base = self._classify(request)
        outcome: Outcome = "answered"
        status: int | None = None
        fault: str | None = None
        try:
            if self.faults.latency > 0:
                await asyncio.sleep(self.faults.latency)
            if info.service == "keyvault" and (vault is None or not self.state.vault_exists(vault, arrived)):
                outcome = "reset"  # no such vault now: the client fails to connect, as DNS would fail it
                return self._reset(request)
            if not _has_bearer_token(request):
                reply = self._unauthorized(info.service, vault)
            else:
                rule = self.faults.take(info)
                fault = rule.kind if rule else None
                if rule is not None and rule.kind == "reset":
                    outcome = "reset"
                    return self._reset(request)
                if rule is not None and rule.kind == "hang":
                    outcome = "hung"
                    assert self._stopping is not None  # noqa: S101 - narrows the type; holds by construction
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), rule.seconds)
                    return self._reset(request)
                if rule is not None and rule.kind == "delay":
                    await asyncio.sleep(rule.seconds)
                if rule is not None and rule.kind == "status":
                    reply = self._fault_reply(rule, info, vault)
                else:
                    reply = await self._answer(request, info, vault, base)
                if rule is not None and rule.kind == "truncate":
                    response = self._web_response(reply, info.service, truncate=True)
                    status = response.status
                    return response
            response = self._web_response(reply, info.service)
            status = response.status
            return response
        finally:
            self.requests.append(
                RequestRecord(
                    service=info.service,
                    vault=info.vault,
                    method=request.method,
                    path=info.path if info.service == "keyvault" else request.path,
                    status=status,
                    outcome=outcome,
                    fault=fault,
                    sandbox_time=arrived,
                    seconds=time.monotonic() - started,
                    received=received,
                )
            )

    async def _answer(self, request: web.Request, info: RequestInfo, vault: VaultInfo | None, base: str) -> ApiResponse:
        if info.service == "keyvault" and vault is not None:
            wait = self.faults.admit(vault.host)
            if wait is not None:
                code, message = default_error("keyvault", 429)
                return error_response("keyvault", 429, code, message, headers={"Retry-After": str(math.ceil(wait))})
        quota_headers: dict[str, str] = {}
        if info.service == "arm" and request.method == "POST" and _RESOURCE_GRAPH.match(info.path):
            admitted, remaining, resets = self.faults.admit_graph()
            # hh:mm:ss, whole seconds cut down as Azure's may be: a client must not take them for exact.
            quota_headers = {
                "x-ms-user-quota-remaining": str(remaining),
                "x-ms-user-quota-resets-after": time.strftime("%H:%M:%S", time.gmtime(math.floor(resets))),
            }
            if not admitted:
                message = "The request was throttled: the user's Resource Graph query quota is used up. Retry later."
                return error_response("arm", 429, "RateLimiting", message, headers=quota_headers)
        answer = await self._api_answer(request, info, vault, base)
        if quota_headers:
            answer = dataclasses.replace(answer, headers={**answer.headers, **quota_headers})
        return answer

    async def _api_answer(
        self, request: web.Request, info: RequestInfo, vault: VaultInfo | None, base: str
    ) -> ApiResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            return error_response(info.service, 400, *_bad_json(info.service))
        api_request = ApiRequest(
            service=info.service,
            method=request.method,
            path=info.path,
            query={name.lower(): value for name, value in request.query.items()},
            body=body,
            now=self.clock.now(),
            base_url=base,
            vault_host=vault.host if info.service == "keyvault" and vault else None,
        )
        api: KeyVaultApi | ArmApi | LogsApi = (
            self._keyvault if info.service == "keyvault" else self.logs if info.service == "loganalytics" else self._arm
        )
        try:
            return api.handle(api_request)
        except Exception:  # a sandbox bug must not look like a network failure to the client under test
            log.exception("sandbox failed to answer %s %s", request.method, request.path)
            code, message = default_error(info.service, 500)
            return error_response(info.service, 500, code, message)

    def _unauthorized(self, service: Service, vault: VaultInfo | None) -> ApiResponse:
        authority = f"https://login.microsoftonline.com/{self.state.tenant_id}"
        if service == "keyvault":
            resource = "https://managedhsm.azure.net" if vault and vault.managed_hsm else "https://vault.azure.net"
            challenge = f'Bearer authorization="{authority}", resource="{resource}"'
        elif service == "loganalytics":
            challenge = f'Bearer authorization_uri="{authority}", error="invalid_token"'
        else:
            challenge = (
                f'Bearer authorization_uri="{authority}", error="invalid_token", '
                "error_description=\"The authentication failed because of missing 'Authorization' header.\""
            )
        code, message = default_error(service, 401)
        return error_response(service, 401, code, message, headers={"WWW-Authenticate": challenge})

    def _fault_reply(self, rule: FaultRule, info: RequestInfo, vault: VaultInfo | None) -> ApiResponse:
        code, message = default_error(info.service, rule.status)
        if info.service == "keyvault" and rule.status == 403 and rule.message is None:
            action = "Microsoft.KeyVault/vaults/keys/read"
            message = forbidden_message(rule.inner_code, vault.name if vault else "", self.state.tenant_id, action)
        headers = {"Retry-After": _seconds(rule.retry_after)} if rule.retry_after is not None else None
        return error_response(
            info.service,
            rule.status,
            rule.code or code,
            rule.message or message,
            inner_code=rule.inner_code,
            headers=headers,
        )

    def _web_response(self, reply: ApiResponse, service: Service, *, truncate: bool = False) -> web.Response:
        headers = {"x-ms-request-id": str(uuid.uuid4()), "Cache-Control": "no-cache"}
        if service == "keyvault":
            headers.update({"x-ms-keyvault-region": "westeurope", "x-ms-keyvault-service-version": "1.9.2000.1"})
        else:
            headers["x-ms-correlation-request-id"] = str(uuid.uuid4())
        headers.update(reply.headers)
        if reply.body is None:
            return web.Response(status=reply.status, headers=headers)
        body = json.dumps(reply.body, separators=(",", ":")).encode()
        if truncate:
            body = body[: len(body) // 2]
        headers["Content-Type"] = "application/json; charset=utf-8"
        return web.Response(status=reply.status, body=body, headers=headers)

    @staticmethod
    def _reset(request: web.Request) -> web.Response:
        """Drop the connection with no answer; the response returned is never sent."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=599)


def _has_bearer_token(request: web.Request) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(token.strip())


def _bad_json(service: Service) -> tuple[str, str]:
    if service == "keyvault":
        return "BadParameter", "The request body is not valid JSON."
    return "InvalidRequestContent", "The request content was invalid and could not be deserialized."
