"""The Key Vault keys data plane (REST 7.x shapes) served from the World at the sandbox clock's instant.

Requests arrive for one vault that exists at that instant (the server resets the connection for one
that does not, as DNS would). Mutations append a Change at the request's instant; key ids in every
answer use the vault's real URI (https://kv-prod.vault.azure.net/keys/<name>/<version>).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import unquote

from monitor.domain.errors import ChangeRejectedError
from monitor.domain.model import (
    DeleteKey,
    KeyId,
    KeyVersion,
    NewVersion,
    PurgeKey,
    RecoverKey,
    UpdateVersion,
    name_id,
)
from monitor.domain.names import is_key_name
from monitor.domain.states import KeyState, VaultState
from monitor.sandbox.faults import forbidden_message
from monitor.sandbox.hsm_rbac import HsmRbac
from monitor.sandbox.keymaterial import KeyMaterial
from monitor.sandbox.resources import SOFT_DELETE_RETENTION_DAYS
from monitor.sandbox.state import SandboxState, VaultInfo, current_version, find_version, visible_versions
from monitor.sandbox.wire import (
    ApiRequest,
    ApiResponse,
    BadSkipTokenError,
    Router,
    from_unix,
    keyvault_error,
    page,
    unix,
)

T = TypeVar("T")

MAX_PAGE_SIZE = 25  # Key Vault's own ceiling for maxresults
DEFAULT_KEY_OPS = {
    "RSA": ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
    "EC": ["sign", "verify"],
    "OCT": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
}
CURVE_SIZES = {"P-256": 256, "P-256K": 256, "P-384": 384, "P-521": 521}
# Key Vault's default rotation policy for a key that never had one: notify 30 days before expiry.
DEFAULT_LIFETIME_ACTIONS = [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}]
_NAME = r"(?P<name>[^/]+)"
_HELP = "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
_DURATION = re.compile(
    r"P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?",
    re.IGNORECASE,
)


class BadRequestError(ValueError):
    """A request body the sandbox (like Key Vault) refuses: the message says what is wrong."""


def parse_duration(text: object) -> timedelta | None:
    """An ISO 8601 duration such as P90D or P2Y (a year as 365 days, a month as 30), or None if not one."""
    if not isinstance(text, str) or not text or text.upper() in {"P", "PT"}:
        return None
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        return None
    n = {k: int(v) if v else 0 for k, v in match.groupdict().items()}
    return timedelta(
        days=n["years"] * 365 + n["months"] * 30 + n["days"],
        hours=n["hours"],
        minutes=n["minutes"],
        seconds=n["seconds"],
    )


def recovery(vault: VaultState) -> tuple[str, int | None]:
    """The (recoveryLevel, recoverableDays) Key Vault reports for keys in `vault`."""
    if not vault.soft_delete:
        return "Purgeable", None
    if vault.purge_protection:
        return "Recoverable", SOFT_DELETE_RETENTION_DAYS
    return "Recoverable+Purgeable", SOFT_DELETE_RETENTION_DAYS


def key_not_found(name: str, version: str | None = None) -> ApiResponse:
    shown = f"{name}/{version}" if version else name
    return keyvault_error(
        404,
        "KeyNotFound",
        f"A key with (name/id) {shown} was not found in this key vault. If you recently deleted this key you may "
        f"be able to recover it using the correct recovery command. {_HELP}",
    )


def deleted_key_not_found(name: str) -> ApiResponse:
    return keyvault_error(404, "KeyNotFound", f"Deleted Key not found: {name}")


def bad_parameter(message: str) -> ApiResponse:
    return keyvault_error(400, "BadParameter", message)


class KeyVaultApi:
    """Routes and handlers for /keys and /deletedkeys of one sandbox."""

    def __init__(self, state: SandboxState, material: KeyMaterial, *, page_size: int = MAX_PAGE_SIZE) -> None:
        self.state = state
        self.material = material
        self.page_size = page_size
        # Each vault's live keys as of an instant, for the World they were judged in: a listing is read a page
        # at a time, and judging every key of the vault for each page made a large vault's listing quadratic.
        self._listings: dict[tuple[str, datetime], tuple[object, list[tuple[KeyId, KeyVersion]]]] = {}
        router = Router(lambda request: keyvault_error(404, "NotFound", f"No route for {request.path}."))
        # Before /keys/{name}/...: `/keys/providers/...` is a scope of an HSM's role management, not a key.
        HsmRbac(state).add_routes(router)
        router.add("GET", r"/keys/?", self._list_keys)
        router.add("POST", rf"/keys/{_NAME}/create", self._create)
        router.add("POST", rf"/keys/{_NAME}/rotate", self._rotate)
        router.add("GET", rf"/keys/{_NAME}/rotationpolicy", self._get_policy)
        router.add("PUT", rf"/keys/{_NAME}/rotationpolicy", self._put_policy)
        # Before /keys/{name}/{version}: "versions" is not a version.
        router.add("GET", rf"/keys/{_NAME}/versions", self._list_versions)
        # get_key sends /keys/{name}/ (an empty version) for the current version.
        router.add("GET", rf"/keys/{_NAME}(?:/(?P<version>[^/]*))?", self._get)
        router.add("PATCH", rf"/keys/{_NAME}(?:/(?P<version>[^/]*))?", self._update)
        router.add("DELETE", rf"/keys/{_NAME}/?", self._delete)
        router.add("GET", r"/deletedkeys/?", self._list_deleted)
        router.add("GET", rf"/deletedkeys/{_NAME}/?", self._get_deleted)
        router.add("DELETE", rf"/deletedkeys/{_NAME}/?", self._purge)
        router.add("POST", rf"/deletedkeys/{_NAME}/recover", self._recover)
        self.router = router

    def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one request for the vault at `request.vault_host`."""
        refused = self._firewall(request)
        if refused is not None:
            return refused
        try:
            return self.router.dispatch(request)
        except BadRequestError as error:
            return bad_parameter(str(error))
        except BadSkipTokenError:
            return bad_parameter("The $skiptoken is invalid.")
        except ChangeRejectedError as error:
            return keyvault_error(409, "Conflict", error.problem)

    def _firewall(self, request: ApiRequest) -> ApiResponse | None:
        """Key Vault's firewall as the monitor meets it: a caller that is no trusted Microsoft service, from no
        network the vault allows (the stand-in allows the monitor's only where `allows_monitor` says so), is
        refused before anything is looked at."""
        info = self.state.vault(request.vault_host or "")
        vault = self.state.vault_state(info, request.now)
        if vault is None or not vault.exists or vault.network.allows_monitor:
            return None
        if not vault.network.public_network_access:
            message = (
                "Public network access is disabled and request is not from a trusted service nor via an approved "
                f"private link.\r\nVault: {info.name};location=westeurope"
            )
            return keyvault_error(403, "Forbidden", message, inner_code="ForbiddenByConnection")
        if vault.network.default_action.strip().lower() == "deny":
            message = forbidden_message("ForbiddenByFirewall", info.name, self.state.tenant_id, "")
            return keyvault_error(403, "Forbidden", message, inner_code="ForbiddenByFirewall")
        return None

    # --- context --------------------------------------------------------------------------------------

    def _vault(self, request: ApiRequest) -> tuple[VaultInfo, VaultState]:
        info = self.state.vault(request.vault_host or "")
        vault = self.state.vault_state(info, request.now)
        if vault is None:  # pragma: no cover - the server only routes requests for vaults that exist
            raise LookupError(info.uri)
        return info, vault

    def _key(self, info: VaultInfo, name: str, now: datetime) -> tuple[KeyId, KeyState]:
        if not is_key_name(name):  # Key Vault refuses the name before looking (and folds only ASCII case)
            raise BadRequestError(f"The request URI contains an invalid name: {unquote(name)}")
        key_id: KeyId = (info.id, name_id(name))
        return key_id, self.state.key_state(key_id, now)

    @staticmethod
    def _live(state: KeyState) -> bool:
        return state.exists and not state.deleted

    # --- documents ------------------------------------------------------------------------------------

    def _key_url(self, info: VaultInfo, key_id: KeyId) -> str:
        return f"https://{info.host}/keys/{self.state.key_name(key_id)}"

    def _attributes(self, vault: VaultState, key_id: KeyId, version: KeyVersion, now: datetime) -> dict[str, Any]:
        attributes: dict[str, Any] = {"enabled": version.enabled}
        if version.nbf is not None:
            attributes["nbf"] = unix(version.nbf)
        if version.exp is not None:
            attributes["exp"] = unix(version.exp)
        attributes["created"] = unix(version.created)
        attributes["updated"] = unix(self.state.updated(key_id, version, now))
        level, days = recovery(vault)
        attributes["recoveryLevel"] = level
        if days is not None:  # real Key Vault adds it (see the SDK recordings); the 7.5 examples predate it
            attributes["recoverableDays"] = days
        return attributes

    def _bundle(
        self, info: VaultInfo, vault: VaultState, key_id: KeyId, version: KeyVersion, now: datetime
    ) -> dict[str, Any]:
        """A KeyBundle as GetKey-example.json: key (kid, kty, key_ops, public members), attributes, tags."""
        kid = f"{self._key_url(info, key_id)}/{version.version}"
        kty = version.kty or "RSA"
        family = kty.upper().removesuffix("-HSM")
        key_ops = list(version.key_ops) if version.key_ops is not None else list(DEFAULT_KEY_OPS.get(family, []))
        key: dict[str, Any] = {"kid": kid, "kty": kty, "key_ops": key_ops}
        key.update(self.material.public_jwk(kid, kty, version.key_size))
        bundle: dict[str, Any] = {"key": key, "attributes": self._attributes(vault, key_id, version, now)}
        tags = self.state.tags(key_id, version.version)
        if tags:
            bundle["tags"] = tags
        return bundle

    def _deleted_fields(self, info: VaultInfo, key_id: KeyId, now: datetime) -> dict[str, Any]:
        deleted = self.state.deleted_at(key_id, now)
        return {
            "recoveryId": f"https://{info.host}/deletedkeys/{self.state.key_name(key_id)}",
            "deletedDate": unix(deleted),
            "scheduledPurgeDate": unix(deleted + timedelta(days=SOFT_DELETE_RETENTION_DAYS)),
        }

    def _item(
        self, info: VaultInfo, vault: VaultState, key_id: KeyId, version: KeyVersion, now: datetime, kid: str
    ) -> dict[str, Any]:
        item: dict[str, Any] = {"kid": kid, "attributes": self._attributes(vault, key_id, version, now)}
        tags = self.state.tags(key_id, version.version)
        if tags:
            item["tags"] = tags
        return item

    def _paged(
        self,
        request: ApiRequest,
        items: Sequence[T],
        render: Callable[[T], dict[str, Any]] = lambda item: item,  # type: ignore[assignment,return-value]
    ) -> ApiResponse:
        raw = request.query.get("maxresults")
        size = self.page_size
        if raw:
            try:
                size = int(raw)
            except ValueError:
                size = 0
            if not 1 <= size <= MAX_PAGE_SIZE:
                raise BadRequestError(f"The value of maxresults is invalid: it must be between 1 and {MAX_PAGE_SIZE}.")
        chunk, next_link = page(items, request, size, "$skiptoken", {"maxresults": str(size)})
        return ApiResponse(200, {"value": [render(item) for item in chunk], "nextLink": next_link})

    # --- reads ----------------------------------------------------------------------------------------

    def _get(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        name, wanted = match["name"], match["version"] or None
        key_id, state = self._key(info, name, request.now)
        if not self._live(state):
            return key_not_found(name)
        version = find_version(state, wanted, request.now) if wanted else current_version(state, request.now)
        if version is None:
            return key_not_found(name, wanted)
        return ApiResponse(200, self._bundle(info, vault, key_id, version, request.now))

    def _list_keys(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        current = self._live_keys(info, request.now)
        # Only the page's items are written out: a large vault is listed in many pages.
        return self._paged(
            request,
            current,
            lambda entry: self._item(info, vault, entry[0], entry[1], request.now, self._key_url(info, entry[0])),
        )

    def _live_keys(self, info: VaultInfo, now: datetime) -> list[tuple[KeyId, KeyVersion]]:
        world = self.state.world
        cached = self._listings.get((info.id, now))
        if cached is not None and cached[0] is world:
            return cached[1]
        current = []
        for key_id in self.state.key_ids(info):
            state = self.state.key_state(key_id, now)
            version = current_version(state, now) if self._live(state) else None
            if version is not None:
                current.append((key_id, version))
        if len(self._listings) >= 64:  # a running clock makes every instant new
            self._listings.clear()
        self._listings[(info.id, now)] = (world, current)
        return current

    def _list_versions(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        key_id, state = self._key(info, match["name"], request.now)
        items = []
        if self._live(state):
            base = self._key_url(info, key_id)
            for version in visible_versions(state, request.now):
                items.append(self._item(info, vault, key_id, version, request.now, f"{base}/{version.version}"))
        return self._paged(request, items)

    def _list_deleted(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        items = []
        for key_id in self.state.key_ids(info):
            state = self.state.key_state(key_id, request.now)
            version = current_version(state, request.now) if state.exists and state.deleted else None
            if version is not None:
                item = self._deleted_fields(info, key_id, request.now)
                item.update(self._item(info, vault, key_id, version, request.now, self._key_url(info, key_id)))
                items.append(item)
        return self._paged(request, items)

    def _get_deleted(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        name = match["name"]
        key_id, state = self._key(info, name, request.now)
        version = current_version(state, request.now) if state.exists and state.deleted else None
        if version is None:
            return deleted_key_not_found(name)
        body = self._deleted_fields(info, key_id, request.now)
        body.update(self._bundle(info, vault, key_id, version, request.now))
        return ApiResponse(200, body)

    def _policy_document(self, info: VaultInfo, key_id: KeyId) -> dict[str, Any]:
        policy = self.state.rotation_policy(key_id)
        document: dict[str, Any] = {"id": f"{self._key_url(info, key_id)}/rotationpolicy"}
        if policy is None:
            document.update({"lifetimeActions": DEFAULT_LIFETIME_ACTIONS, "attributes": {}})
            return document
        attributes: dict[str, Any] = {}
        stored = policy.document.get("attributes")
        if isinstance(stored, Mapping) and stored.get("expiryTime"):
            attributes["expiryTime"] = stored["expiryTime"]
        attributes.update({"created": unix(policy.created), "updated": unix(policy.updated)})
        document["lifetimeActions"] = list(policy.document.get("lifetimeActions") or [])
        document["attributes"] = attributes
        return document

    def _get_policy(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, _ = self._vault(request)
        key_id, state = self._key(info, match["name"], request.now)
        if not self._live(state):
            return key_not_found(match["name"])
        return ApiResponse(200, self._policy_document(info, key_id))

    # --- writes ---------------------------------------------------------------------------------------

    def _put_policy(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, _ = self._vault(request)
        key_id, state = self._key(info, match["name"], request.now)
        if not self._live(state):
            return key_not_found(match["name"])
        body = _object(request.body)
        actions = body.get("lifetimeActions", [])
        if not isinstance(actions, list):
            raise BadRequestError("lifetimeActions must be a list.")
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, Mapping):
            raise BadRequestError("attributes must be an object.")
        expiry = attributes.get("expiryTime")
        if expiry is not None and parse_duration(expiry) is None:
            raise BadRequestError(f"expiryTime {expiry!r} is not an ISO 8601 duration such as P90D.")
        document: dict[str, Any] = {"lifetimeActions": actions, "attributes": {}}
        if expiry is not None:
            document["attributes"]["expiryTime"] = expiry
        self.state.set_rotation_policy(key_id, document, request.now)
        return ApiResponse(200, self._policy_document(info, key_id))

    def _update(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        name, wanted = match["name"], match["version"] or None
        key_id, state = self._key(info, name, request.now)
        if not self._live(state):
            return key_not_found(name)
        version = find_version(state, wanted, request.now) if wanted else current_version(state, request.now)
        if version is None:
            return key_not_found(name, wanted)
        body = _object(request.body)
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, Mapping):
            raise BadRequestError("attributes must be an object.")
        fields: dict[str, Any] = {}
        if "enabled" in attributes and attributes["enabled"] is not None:
            if not isinstance(attributes["enabled"], bool):
                raise BadRequestError("attributes.enabled must be true or false.")
            fields["enabled"] = attributes["enabled"]
        for field_name in ("nbf", "exp"):
            if field_name in attributes:  # present and null clears the limit
                fields[field_name] = _optional_time(attributes[field_name], f"attributes.{field_name}")
        if "key_ops" in body:
            fields["key_ops"] = None if body["key_ops"] is None else _strings(body["key_ops"], "key_ops")
        if fields:
            change = UpdateVersion(at=request.now, vault=info.uri, key=name, version=version.version, **fields)
            self.state.apply(change)
        if "tags" in body:
            self.state.set_tags(key_id, version.version, _tags(body["tags"]), request.now)
        state = self.state.key_state(key_id, request.now)
        updated = find_version(state, version.version, request.now) or version
        return ApiResponse(200, self._bundle(info, vault, key_id, updated, request.now))

    def _new_version(
        self, request: ApiRequest, info: VaultInfo, name: str, version: KeyVersion, tags: dict[str, str] | None = None
    ) -> ApiResponse:
        self.state.apply(NewVersion(at=request.now, vault=info.uri, key=name, version=version))
        key_id: KeyId = (info.id, name_id(name))
        if tags is not None:
            self.state.set_tags(key_id, version.version, tags, request.now)
        vault = self.state.vault_state(info, request.now)
        assert vault is not None  # noqa: S101 - narrows the type; holds by construction
        created = find_version(self.state.key_state(key_id, request.now), version.version, request.now) or version
        return ApiResponse(200, self._bundle(info, vault, key_id, created, request.now))

    def _rotate(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, _ = self._vault(request)
        name = match["name"]
        key_id, state = self._key(info, name, request.now)
        current = current_version(state, request.now) if self._live(state) else None
        if current is None:
            return key_not_found(name)
        policy = self.state.rotation_policy(key_id)
        attributes = policy.document.get("attributes") if policy else None
        expiry = parse_duration(attributes.get("expiryTime")) if isinstance(attributes, Mapping) else None
        version = KeyVersion(
            version=uuid.uuid4().hex,
            created=request.now,
            exp=request.now + expiry if expiry else None,
            key_ops=current.key_ops,
            kty=current.kty,
            key_size=current.key_size,
        )
        return self._new_version(request, info, self.state.key_name(key_id), version)

    def _create(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, _ = self._vault(request)
        name = match["name"]
        _, state = self._key(info, name, request.now)
        if state.exists and state.deleted:
            return keyvault_error(
                409,
                "Conflict",
                f"Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the key can only be recovered or purged.",
            )
        body = _object(request.body)
        kty = body.get("kty")
        if not isinstance(kty, str) or kty.upper().removesuffix("-HSM") not in DEFAULT_KEY_OPS:
            raise BadRequestError("kty must be one of RSA, RSA-HSM, EC, EC-HSM, oct, oct-HSM.")
        key_size = body.get("key_size")
        if key_size is None and isinstance(body.get("crv"), str):
            key_size = CURVE_SIZES.get(body["crv"].upper())
        if key_size is not None and (isinstance(key_size, bool) or not isinstance(key_size, int)):
            raise BadRequestError("key_size must be a whole number.")
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, Mapping):
            raise BadRequestError("attributes must be an object.")
        enabled = attributes.get("enabled", True)
        version = KeyVersion(
            version=uuid.uuid4().hex,
            created=request.now,
            enabled=True if enabled is None else bool(enabled),
            nbf=_optional_time(attributes.get("nbf"), "attributes.nbf"),
            exp=_optional_time(attributes.get("exp"), "attributes.exp"),
            key_ops=None if body.get("key_ops") is None else _strings(body["key_ops"], "key_ops"),
            kty=kty,
            key_size=key_size,
        )
        tags = _tags(body["tags"]) if body.get("tags") is not None else None
        return self._new_version(request, info, name, version, tags)

    def _delete(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        name = match["name"]
        key_id, state = self._key(info, name, request.now)
        version = current_version(state, request.now) if self._live(state) else None
        if version is None:
            return key_not_found(name)
        bundle = self._bundle(info, vault, key_id, version, request.now)
        if not vault.soft_delete:  # without soft delete, Key Vault deletes for good at once
            self.state.apply(PurgeKey(at=request.now, vault=info.uri, key=name))
            return ApiResponse(200, bundle)
        self.state.apply(DeleteKey(at=request.now, vault=info.uri, key=name))
        body = self._deleted_fields(info, key_id, request.now)
        body.update(bundle)
        return ApiResponse(200, body)

    def _recover(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        name = match["name"]
        key_id, state = self._key(info, name, request.now)
        if not (state.exists and state.deleted):
            return deleted_key_not_found(name)
        self.state.apply(RecoverKey(at=request.now, vault=info.uri, key=name))
        version = current_version(self.state.key_state(key_id, request.now), request.now)
        if version is None:  # pragma: no cover - a deleted key that exists has its versions
            return key_not_found(name)
        return ApiResponse(200, self._bundle(info, vault, key_id, version, request.now))

    def _purge(self, request: ApiRequest, match: re.Match[str]) -> ApiResponse:
        info, vault = self._vault(request)
        name = match["name"]
        _, state = self._key(info, name, request.now)
        if not (state.exists and state.deleted):
            return deleted_key_not_found(name)
        if vault.purge_protection:
            return keyvault_error(
                403,
                "Forbidden",
                'Operation "purge" is not allowed because purge protection is enabled for this vault. Key Vault '
                "service will automatically purge it after the retention period has passed.",
            )
        self.state.apply(PurgeKey(at=request.now, vault=info.uri, key=name))
        return ApiResponse(204)


def _object(body: object) -> Mapping[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, Mapping):
        raise BadRequestError("The request body must be a JSON object.")
    return body


def _optional_time(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return from_unix(value)
    except ValueError:
        raise BadRequestError(f"{what} must be Unix seconds.") from None


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequestError(f"{what} must be a list of strings.")
    return tuple(value)


def _tags(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequestError("tags must be an object of strings.")
    return {str(k): v for k, v in value.items()}
