"""infra/ and azure.yaml, checked offline: the Bicep parses, sets exactly the settings the code reads, wires exactly
the events the handler accepts, grants only narrow roles, and azd deploys this app.

The Bicep CLI cannot be installed here, so the files are read as syntax trees (tree-sitter's Bicep grammar) and the
checks walk those trees: which keys an object literal has, which variable a role assignment names, and so on.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from tree_sitter import Node
from tree_sitter_language_pack import get_parser

from monitor.entry.config import SETTINGS, Settings
from monitor.formats.events import KeyVaultEventType

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

# App settings the Bicep may set besides keyhealth's own, each read by the Functions host or a library the code
# uses. Anything else set there is a setting nobody reads.
PLATFORM_SETTINGS = {
    # The Functions host's storage, reached with the app's user-assigned identity instead of a connection string.
    "AzureWebJobsStorage__accountName": "Functions host",
    "AzureWebJobsStorage__credential": "Functions host",
    "AzureWebJobsStorage__clientId": "Functions host",
    # Where the host sends its telemetry, and how it signs in (local authentication is off).
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "Functions host",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Functions host",
    # DefaultAzureCredential (monitor/entry/bootstrap.py) picks the user-assigned identity by it.
    "AZURE_CLIENT_ID": "azure-identity",
    # OTLP export of metrics and spans (monitor/entry/bootstrap.py reads it).
    "OTEL_EXPORTER_OTLP_ENDPOINT": "OpenTelemetry exporter",
}
# Flex Consumption takes the runtime from functionAppConfig and rejects these.
FLEX_REJECTS = {"FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION"}

# Built-in roles no assignment may grant: each can rewrite or delete whatever it is scoped to.
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
KEY_VAULT_ADMINISTRATOR = "00482a5a-887f-4fb3-b363-3b7fe8e74483"
FORBIDDEN_ROLES = {OWNER: "Owner", CONTRIBUTOR: "Contributor", KEY_VAULT_ADMINISTRATOR: "Key Vault Administrator"}
# The roles infra/README.md explains; a new one is a decision to document, so it must be added here too.
KNOWN_ROLES = {
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader",
    "21090545-7ca7-4776-b22c-e363652d74d2": "Key Vault Reader",
    "14b46e9e-c2b7-41b4-b07b-48a6ebf60603": "Key Vault Crypto Officer",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "73c42c96-874c-492b-b04d-ab87d138a893": "Log Analytics Reader",
}
CUSTOM_ROLE = "custom"
UNPIN_ACTIONS = {"Microsoft.ServiceBus/namespaces/read", "Microsoft.ServiceBus/namespaces/write"}
# The data action Key Vault checks for recovering a soft-deleted key (Recover Deleted Key: keys/recover).
RECOVER_DATA_ACTION = "Microsoft.KeyVault/vaults/keys/recover/action"
# Roles that write keys or namespaces: granted only when remediation is on.
WRITE_ROLES = {"14b46e9e-c2b7-41b4-b07b-48a6ebf60603", CUSTOM_ROLE}


# --- reading Bicep syntax trees --------------------------------------------------------------------------------


@cache
def _tree(path: Path) -> Node:
    return get_parser("bicep").parse(path.read_bytes()).root_node


def _text(node: Node) -> str:
    return (node.text or b"").decode()


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _literal(node: Node | None) -> str | None:
    """The value of a string literal without interpolation; None for anything else."""
    if node is None or node.type != "string":
        return None
    if any(child.type == "interpolation" for child in node.children):
        return None
    parts = []
    for child in node.children:
        if child.type == "string_content":
            parts.append(_text(child))
        elif child.type == "escape_sequence":
            parts.append(_text(child)[1:])
    return "".join(parts)


def _key(prop: Node) -> str:
    key = prop.children[0]
    quoted = _literal(key)
    return quoted if quoted is not None else _text(key)


def _properties(obj: Node) -> dict[str, Node]:
    """An object literal's properties: key -> value node."""
    return {_key(child): child.children[-1] for child in obj.children if child.type == "object_property"}


def _get(obj: Node | None, *path: str) -> Node | None:
    for name in path:
        if obj is None or obj.type != "object":
            return None
        obj = _properties(obj).get(name)
    return obj


def _strings(array: Node | None) -> list[str]:
    """The string literals of an array literal (anything else fails the test that asked)."""
    assert array is not None and array.type == "array", f"expected an array literal, got {array}"
    items = [child for child in array.children if child.type not in {"[", "]", ","}]
    values = [_literal(item) for item in items]
    assert None not in values, f"expected only string literals in {_text(array)}"
    return [v for v in values if v is not None]


def _variables(path: Path) -> dict[str, Node]:
    return {
        _text(decl.children[1]): decl.children[-1]
        for decl in _tree(path).children
        if decl.type == "variable_declaration"
    }


@dataclass(frozen=True)
class Resource:
    """One `resource` declaration: its file, symbol, type (without the API version) and body object."""

    path: Path
    symbol: str
    type: str
    body: Node
    conditional: bool  # declared under `if (...)`
    declaration: Node


def _body(value: Node) -> tuple[Node, bool]:
    """The object of a resource or module value, unwrapping `[for ...: ...]` and `if (...)`."""
    conditional = False
    while value.type != "object":
        if value.type == "if_statement":
            conditional = True
        value = next(c for c in value.children if c.type in {"object", "if_statement", "for_statement"})
    return value, conditional


def _resources(path: Path) -> list[Resource]:
    found = []
    for decl in _tree(path).children:
        if decl.type != "resource_declaration":
            continue
        body, conditional = _body(decl.children[-1])
        type_name = (_literal(decl.children[2]) or "").split("@")[0]
        found.append(Resource(path, _text(decl.children[1]), type_name, body, conditional, decl))
    return found


def _all_resources(type_name: str) -> list[Resource]:
    return [r for path in BICEP_FILES for r in _resources(path) if r.type.lower() == type_name.lower()]


def _preceded_by_comment(path: Path, declaration: Node) -> bool:
    siblings = _tree(path).children
    index = next(i for i, node in enumerate(siblings) if node == declaration)
    return index > 0 and siblings[index - 1].type == "comment"


# --- the files parse -----------------------------------------------------------------------------------------------


def test_the_infra_has_a_main_template_and_modules():
    """main.bicep and its modules under infra/app exist (a rename would otherwise empty every check below)."""
    assert MAIN in BICEP_FILES
    assert any(path.parent == INFRA / "app" for path in BICEP_FILES)


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses_without_error_nodes(path):
    """tree-sitter's Bicep grammar reads the whole file: no ERROR and no MISSING node."""
    broken = [node for node in _walk(_tree(path)) if node.type == "ERROR" or node.is_missing]
    assert not broken, [f"line {node.start_point[0] + 1}: {_text(node)[:60]!r}" for node in broken]


def test_every_module_main_uses_exists():
    """Each `module` of main.bicep points at a file in infra/."""
    modules = [decl for decl in _tree(MAIN).children if decl.type == "module_declaration"]
    assert modules
    for decl in modules:
        target = _literal(decl.children[2])
        assert target is not None and (INFRA / target).is_file(), _text(decl)[:80]


def test_main_parameters_name_only_parameters_of_main_and_every_required_one():
    """main.parameters.json sets no parameter main.bicep lacks, and every parameter without a default."""
    declared: dict[str, bool] = {}
    for decl in _tree(MAIN).children:
        if decl.type == "parameter_declaration":
            declared[_text(decl.children[1])] = any(child.type == "=" for child in decl.children)
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert set(given) <= set(declared)
    assert {name for name, has_default in declared.items() if not has_default} <= set(given)


# --- app settings --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppSettings:
    literal: dict[str, Node]  # setting name -> value expression
    computed: list[str]  # variables whose keys are computed at deployment


@cache
def _app_settings() -> AppSettings:
    """The settings of the app's `appsettings` config resource: its properties, a union of object variables."""
    configs = [
        r for r in _all_resources("Microsoft.Web/sites/config") if _literal(_get(r.body, "name")) == "appsettings"
    ]
    assert len(configs) == 1, "expected one Microsoft.Web/sites/config named appsettings"
    config = configs[0]
    variables = _variables(config.path)
    value = _get(config.body, "properties")
    assert value is not None
    parts = [value]
    if value.type == "call_expression" and _text(value.children[0]) == "union":
        parts = [c for c in value.children[1].children if c.type not in {"(", ")", ","}]
    literal: dict[str, Node] = {}
    computed: list[str] = []
    for part in parts:
        name = _text(part) if part.type == "identifier" else None
        resolved = variables.get(name, part) if name else part
        if resolved.type == "object":
            duplicates = set(literal) & set(_properties(resolved))
            assert not duplicates, f"set twice: {duplicates}"
            literal.update(_properties(resolved))
        else:
            computed.append(name or _text(part))
    return AppSettings(literal, computed)


def _keyhealth_settings_in_bicep() -> set[str]:
    return {name for name in _app_settings().literal if name.startswith("KEYHEALTH_")}


def test_every_setting_the_code_reads_is_set_in_azure():
    """Each setting of monitor/entry/config.py has a value in the app's settings (derived at run time, so a setting
    added to the code later fails here until the Bicep sets it)."""
    assert {spec.name for spec in SETTINGS.values()} - _keyhealth_settings_in_bicep() == set()


def test_no_setting_is_set_that_nobody_reads():
    """Every other setting is a keyhealth setting the code knows or one the platform reads (listed above)."""
    names = set(_app_settings().literal)
    assert _keyhealth_settings_in_bicep() - {spec.name for spec in SETTINGS.values()} == set()
    assert names - _keyhealth_settings_in_bicep() - set(PLATFORM_SETTINGS) == set()
    assert names & FLEX_REJECTS == set()
    # The only settings named at deployment are the sink secrets KEYHEALTH_ALERTS names by app setting.
    assert _app_settings().computed == ["alertSecretReferences"]


def test_the_literal_values_set_in_azure_are_valid_settings():
    """A value written out in the Bicep passes the code's own validation; state lives in Table Storage."""
    by_name = {spec.name: spec for spec in SETTINGS.values()}
    literal = {name: _literal(node) for name, node in _app_settings().literal.items() if name in by_name}
    checked = 0
    for name, value in literal.items():
        if value is None:  # computed from parameters at deployment
            continue
        spec = by_name[name]
        spec.parse(name, value.strip() or spec.default)
        checked += 1
    assert checked >= 10
    assert literal["KEYHEALTH_STATE_STORE"] == "tables"
    assert literal["KEYHEALTH_STATIC_TOKEN"] == ""  # never a fixed token against Azure


def test_every_setting_set_in_azure_is_in_the_local_example_and_the_readme():
    """local.settings.json.example and the README's settings table list every keyhealth setting the Bicep sets."""
    example = json.loads((ROOT / "local.settings.json.example").read_text())["Values"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in sorted(_keyhealth_settings_in_bicep()):
        assert name in example, name
        assert f"| `{name}` |" in readme, name


def test_secrets_are_key_vault_references():
    """The settings that hold secrets are empty or a Key Vault reference, never a value from a parameter."""
    references = {
        name: _text(node) for name, node in _app_settings().literal.items() if name in _secret_setting_names()
    }
    assert references
    for name, expression in references.items():
        assert _literal(_app_settings().literal[name]) == "" or "keyVaultReference(" in expression, name
    functions = _text(_tree(INFRA / "app" / "function.bicep"))
    assert "'@Microsoft.KeyVault(VaultName=${vault};SecretName=${secret})'" in functions


def _secret_setting_names() -> set[str]:
    return {spec.name for spec in SETTINGS.values() if spec.secret}


# --- Event Grid ----------------------------------------------------------------------------------------------------


def _event_subscriptions() -> list[Resource]:
    found = _all_resources("Microsoft.EventGrid/systemTopics/eventSubscriptions")
    assert found, "no Event Grid subscription in infra/"
    return found


def _event_grid_trigger_name() -> str:
    """The name of function_app.py's Event Grid trigger, read from its decorators."""
    module = ast.parse((ROOT / "function_app.py").read_text())
    for node in module.body:
        if not isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            continue
        decorators = [d for d in node.decorator_list if isinstance(d, ast.Call)]
        called = {d.func.attr: d for d in decorators if isinstance(d.func, ast.Attribute)}
        if "event_grid_trigger" in called and "function_name" in called:
            argument = called["function_name"].args[0]
            assert isinstance(argument, ast.Constant) and isinstance(argument.value, str)
            return argument.value
    raise AssertionError("function_app.py has no Event Grid trigger")


def test_the_event_grid_filter_lists_exactly_the_event_types_the_handler_accepts():
    """includedEventTypes is the set monitor/formats/events.py turns into KeyVaultEventType, no more, no fewer."""
    accepted = {kind.value for kind in KeyVaultEventType}
    for subscription in _event_subscriptions():
        listed = _strings(_get(subscription.body, "properties", "filter", "includedEventTypes"))
        assert len(listed) == len(set(listed))
        assert set(listed) == accepted


def test_events_go_to_the_event_grid_trigger_with_retries_and_dead_letters():
    """The destination is the app's Event Grid trigger function; failed deliveries retry, then dead-letter to blob."""
    trigger = _event_grid_trigger_name()
    for subscription in _event_subscriptions():
        properties = _get(subscription.body, "properties")
        if subscription.symbol == "toServe":  # the optional webhook to `keyhealth serve`, checked below
            continue
        assert _literal(_get(properties, "destination", "endpointType")) == "AzureFunction"
        target = _get(properties, "destination", "properties", "resourceId")
        assert target is not None, subscription.symbol
        assert _text(target).endswith(f"/functions/{trigger}'"), _text(target)
        assert _get(properties, "retryPolicy", "maxDeliveryAttempts") is not None
        assert _get(properties, "retryPolicy", "eventTimeToLiveInMinutes") is not None
        dead_letter = _get(properties, "deadLetterWithResourceIdentity", "deadLetterDestination")
        dead_letter = dead_letter or _get(properties, "deadLetterDestination")
        assert _literal(_get(dead_letter, "endpointType")) == "StorageBlob"
        assert _get(dead_letter, "properties", "blobContainerName") is not None
        assert _literal(_get(properties, "eventDeliverySchema")) == "EventGridSchema"


VAULT_EVENTS = INFRA / "app" / "vault-events.bicep"


def test_events_reach_serve_only_by_entra_id_delivery_and_only_when_asked():
    """The optional `keyhealth serve` subscription is a WebHook whose destination names the tenant and the
    application id or URI Event Grid gets tokens for; it exists only for an https URL with both given (off by
    default), and keeps the same retries and dead letters as the function's."""
    (serve,) = [s for s in _event_subscriptions() if s.symbol == "toServe"]
    assert serve.conditional and serve.path == VAULT_EVENTS
    destination = _get(serve.body, "properties", "destination")
    assert _literal(_get(destination, "endpointType")) == "WebHook"
    given = {
        "endpointUrl": "serveWebhookUrl",
        "azureActiveDirectoryTenantId": "serveAuthTenantId",
        "azureActiveDirectoryApplicationIdOrUri": "serveAuthAudience",
    }
    for name, parameter in given.items():
        value = _get(destination, "properties", name)
        assert value is not None and _text(value) == parameter, name
    properties = _get(serve.body, "properties")
    assert _get(properties, "retryPolicy", "maxDeliveryAttempts") is not None
    dead_letter = _get(properties, "deadLetterWithResourceIdentity", "deadLetterDestination")
    assert _literal(_get(dead_letter, "endpointType")) == "StorageBlob"
    condition = next(c for c in _walk(serve.declaration) if c.type == "parenthesized_expression")
    wanted = {
        "serveWebhookUrl": "https://keyhealth.example.com/api/events",
        "serveAuthTenantId": "11111111-1111-4111-8111-111111111111",
        "serveAuthAudience": "api://keyhealth-serve",
    }
    assert _evaluate(condition, VAULT_EVENTS, wanted) is True
    for missing in ({**wanted, "serveAuthAudience": ""}, {**wanted, "serveAuthTenantId": ""}):
        assert _evaluate(condition, VAULT_EVENTS, missing) is False  # never an unauthenticated webhook
    assert _evaluate(condition, VAULT_EVENTS, {**wanted, "serveWebhookUrl": "http://keyhealth.example.com"}) is False
    defaults = _main_parameters({})
    assert (defaults["serveWebhookUrl"], defaults["serveAuthAudience"]) == ("", "")  # off by default
    module = {_text(d.children[1]): d for d in _tree(MAIN).children if d.type == "module_declaration"}["vaultEvents"]
    assert "serveAuthAudience: trim(serveAuthAudience)" in _text(module)


def test_each_vault_gets_a_key_vault_system_topic():
    """The subscriptions hang off a system topic whose source is a vault (topic type Microsoft.KeyVault.vaults)."""
    topics = _all_resources("Microsoft.EventGrid/systemTopics")
    assert topics
    for topic in topics:
        assert _literal(_get(topic.body, "properties", "topicType")) == "Microsoft.KeyVault.vaults"


# --- roles ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    assignment: Resource
    role: str  # a role definition GUID, or CUSTOM_ROLE
    role_variable: str | None


def _resolve_role(assignment: Resource) -> Grant:
    """The role an assignment grants: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', X) where X
    is a commented variable holding the GUID, or the name of a custom role defined in the same file."""
    value = _get(assignment.body, "properties", "roleDefinitionId")
    where = f"{assignment.path.name}: {assignment.symbol}"
    assert value is not None and value.type == "call_expression", f"{where}: roleDefinitionId is not a call"
    assert _text(value.children[0]) == "subscriptionResourceId", where
    arguments = [c for c in value.children[1].children if c.type not in {"(", ")", ","}]
    assert _literal(arguments[0]) == "Microsoft.Authorization/roleDefinitions", where
    role = arguments[-1]
    if role.type == "identifier":
        name = _text(role)
        declaration = next(
            decl
            for decl in _tree(assignment.path).children
            if decl.type == "variable_declaration" and _text(decl.children[1]) == name
        )
        guid = _literal(declaration.children[-1])
        assert guid is not None and re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", guid), where
        assert _preceded_by_comment(assignment.path, declaration), f"{where}: say which role {name} is, and why"
        return Grant(assignment, guid, name)
    if role.type == "member_expression":
        symbol = _text(role).split(".")[0]
        custom = [r for r in _resources(assignment.path) if r.symbol == symbol]
        assert custom and custom[0].type == "Microsoft.Authorization/roleDefinitions", where
        return Grant(assignment, CUSTOM_ROLE, f"{symbol}.name")
    raise AssertionError(f"{where}: name the role by a variable or a custom role in the same file")


@cache
def _grants() -> list[Grant]:
    assignments = _all_resources("Microsoft.Authorization/roleAssignments")
    assert assignments
    return [_resolve_role(assignment) for assignment in assignments]


def test_no_role_assignment_grants_owner_contributor_or_key_vault_administrator():
    """None of the broad roles is granted anywhere."""
    granted = {grant.role for grant in _grants()}
    assert {FORBIDDEN_ROLES[role] for role in granted & set(FORBIDDEN_ROLES)} == set()


def test_every_role_granted_is_a_known_narrow_one():
    """Each assignment grants a documented built-in role or the unpin custom role."""
    for grant in _grants():
        assert grant.role in KNOWN_ROLES or grant.role == CUSTOM_ROLE, (grant.assignment.symbol, grant.role)


def test_role_assignment_names_are_guids_of_scope_principal_and_role():
    """Each assignment is named guid(<scope>, <principal>, <role>), so redeploying finds the same assignment."""
    for grant in _grants():
        name = _get(grant.assignment.body, "name")
        assert name is not None and name.type == "call_expression" and _text(name.children[0]) == "guid"
        arguments = [_text(c) for c in name.children[1].children if c.type not in {"(", ")", ","}]
        assert len(arguments) == 3, _text(name)
        assert "principalid" in arguments[1].lower(), _text(name)
        assert arguments[2] == grant.role_variable, _text(name)


def test_custom_roles_hold_only_namespace_read_and_write_or_key_recovery():
    """The unpin role can read and write Service Bus namespaces; the recover role can recover a soft-deleted key
    (no delete, no purge, no other key operation). Nothing else, and each is assignable in one group."""
    definitions = _all_resources("Microsoft.Authorization/roleDefinitions")
    assert {d.symbol for d in definitions} == {"unpinRole", "recoverRole"}
    for definition in definitions:
        permissions = _get(definition.body, "properties", "permissions")
        assert permissions is not None
        for entry in (c for c in permissions.children if c.type == "object"):
            if definition.symbol == "unpinRole":
                assert set(_strings(_get(entry, "actions"))) <= UNPIN_ACTIONS
                assert _strings(_get(entry, "dataActions")) == []
            else:
                assert _strings(_get(entry, "actions")) == []
                assert _strings(_get(entry, "dataActions")) == [RECOVER_DATA_ACTION]
            for other in ("notActions", "notDataActions"):
                assert _strings(_get(entry, other)) == []
        scopes = _get(definition.body, "properties", "assignableScopes")
        assert scopes is not None and _text(scopes).split() == ["[", "resourceGroup().id", "]"]


def test_write_roles_are_granted_only_when_remediation_is_on():
    """Key Vault Crypto Officer is conditional on `remediate`, which main.bicep sets only for remediationMode 'on';
    the unpin role is deployed only over namespaces chosen when remediationMode is 'on' and unpin is allowed."""
    on = "remediationMode == 'on'"
    for grant in _grants():
        if grant.role == "14b46e9e-c2b7-41b4-b07b-48a6ebf60603":
            assert grant.assignment.conditional, grant.assignment.symbol
            condition = next(c for c in _walk(grant.assignment.declaration) if c.type == "parenthesized_expression")
            assert _text(condition) == "(remediate)" or _text(condition).startswith("(remediate && "), _text(condition)
    modules = {_text(d.children[1]): d for d in _tree(MAIN).children if d.type == "module_declaration"}
    vault_access = _text(modules["vaultAccess"])
    assert re.search(r"remediate: " + re.escape(on) + " &&", vault_access)
    unpin_loop = next(c for c in _walk(modules["unpinRole"]) if c.type == "for_statement")
    iterated = next(c for c in unpin_loop.children if c.type == "identifier")
    chosen = _text(_variables(MAIN)[_text(iterated)])
    assert "unpinNamespaces" in chosen
    assert _text(_variables(MAIN)["unpinNamespaces"]).startswith(on)
    assert {grant.role for grant in _grants() if grant.assignment.path.name == "unpin-role.bicep"} == {CUSTOM_ROLE}
    recover = [g for g in _grants() if g.role_variable == "recoverRole.name"]
    assert recover and all(_text(g.assignment.declaration).count("if (remediate && ") == 1 for g in recover)
    written = {g.role for g in _grants() if g.role in WRITE_ROLES}
    assert written == WRITE_ROLES


# --- remediation: what the templates would deploy ------------------------------------------------------------------
#
# A small evaluator for the part of Bicep's expression language the remediation wiring uses (variables, parameters,
# user functions, lambdas, the ARM functions below), so the checks read what a deployment would compute rather
# than how the text is spelled. Anything else fails loudly.


def _arm_starts_with(text: str, prefix: str) -> bool:
    return text.lower().startswith(prefix.lower())  # ARM's startsWith ignores case


ARM_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "join": lambda items, separator: separator.join(items),
    "split": lambda text, separator: text.split(separator),
    "trim": str.strip,
    "toLower": str.lower,
    "empty": lambda value: len(value) == 0,
    "contains": lambda container, item: item in container,
    "startsWith": _arm_starts_with,
    "substring": lambda text, start, length=None: text[start:] if length is None else text[start : start + length],
    "length": len,
    "concat": lambda *parts: [item for part in parts for item in part],
    "last": lambda items: items[-1],
    "union": lambda *parts: list(dict.fromkeys(item for part in parts for item in part)),
    "environment": lambda: {"suffixes": {"keyvaultDns": ".vault.azure.net"}},
}


def _arguments(call: Node) -> list[Node]:
    return [c for c in call.children[1].children if c.type not in {"(", ")", ","}]


def _evaluate(node: Node, path: Path, scope: Mapping[str, object]) -> object:
    kind = node.type
    if kind == "string":
        parts = []
        for child in node.children:
            if child.type == "string_content":
                parts.append(_text(child))
            elif child.type == "escape_sequence":
                parts.append(_text(child)[1:])
            elif child.type == "interpolation":
                parts.append(str(_evaluate(child.children[1], path, scope)))
        return "".join(parts)
    if kind == "boolean":
        return _text(node) == "true"
    if kind == "number":
        return int(_text(node))
    if kind == "array":
        return [_evaluate(c, path, scope) for c in node.children if c.type not in {"[", "]", ","}]
    if kind == "identifier":
        name = _text(node)
        if name in scope:
            return scope[name]
        variables = _variables(path)
        assert name in variables, f"{path.name}: {name} is neither a parameter given nor a variable"
        return _evaluate(variables[name], path, scope)
    if kind == "parenthesized_expression":
        return _evaluate(node.children[1], path, scope)
    if kind == "unary_expression" and _text(node.children[0]) == "!":
        return not _evaluate(node.children[1], path, scope)
    if kind == "binary_expression":
        operator = _text(node.children[1])
        left = _evaluate(node.children[0], path, scope)
        if operator == "&&":
            return bool(left) and bool(_evaluate(node.children[2], path, scope))
        if operator == "||":
            return bool(left) or bool(_evaluate(node.children[2], path, scope))
        right = _evaluate(node.children[2], path, scope)
        if operator in {"==", "!="}:
            return (left == right) == (operator == "==")
        if operator == "*" and isinstance(left, int) and isinstance(right, int):
            return left * right
    if kind == "ternary_expression":
        chosen = node.children[2] if _evaluate(node.children[0], path, scope) else node.children[4]
        return _evaluate(chosen, path, scope)
    if kind == "member_expression":
        holder = _evaluate(node.children[0], path, scope)
        assert isinstance(holder, dict)
        return holder[_text(node.children[2])]
    if kind == "call_expression":
        name = _text(node.children[0])
        arguments = _arguments(node)
        if name in {"map", "filter"}:
            items = _evaluate(arguments[0], path, scope)
            lambda_ = arguments[1]
            assert isinstance(items, list) and lambda_.type == "lambda_expression"
            variable = _text(lambda_.children[0])
            results = [_evaluate(lambda_.children[-1], path, {**scope, variable: item}) for item in items]
            return results if name == "map" else [i for i, keep in zip(items, results, strict=True) if keep]
        values = [_evaluate(a, path, scope) for a in arguments]
        functions = {_text(d.children[1]): d for d in _tree(path).children if d.type == "user_defined_function"}
        if name in functions:
            declared = functions[name]
            parameters = [_text(p.children[0]) for p in declared.children[2].children if p.type == "parameter"]
            return _evaluate(declared.children[-1], path, {**scope, **dict(zip(parameters, values, strict=True))})
        assert name in ARM_FUNCTIONS, f"{path.name}: the evaluator does not know {name}()"
        return ARM_FUNCTIONS[name](*values)
    raise AssertionError(f"{path.name}: the evaluator does not read {kind}: {_text(node)[:60]}")


def _azd_values(environment: dict[str, str]) -> dict[str, str]:
    """main.parameters.json as azd renders it: ${NAME} and ${NAME=default} replaced from the environment."""
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]

    def substitute(match: re.Match[str]) -> str:
        return environment.get(match.group(1), match.group(3) or "")

    return {name: re.sub(r"\$\{(\w+)(=([^}]*))?\}", substitute, entry["value"]) for name, entry in given.items()}


def _main_parameters(environment: dict[str, str]) -> dict[str, object]:
    """main.bicep's parameters for an azd environment: the rendered values, else each declaration's default."""
    values: dict[str, object] = {}
    for decl in _tree(MAIN).children:
        if decl.type == "parameter_declaration" and any(child.type == "=" for child in decl.children):
            values[_text(decl.children[1])] = _evaluate(decl.children[-1], MAIN, {})
    rendered: dict[str, object] = dict(_azd_values(environment))
    return {**values, **rendered}


def _module_parameter(module: str, parameter: str) -> Node:
    declaration = next(
        d for d in _tree(MAIN).children if d.type == "module_declaration" and _text(d.children[1]) == module
    )
    body, _ = _body(declaration.children[-1])
    value = _get(body, "params", parameter)
    assert value is not None, f"module {module} has no parameter {parameter}"
    return value


def _rendered_remediation_keys(environment: dict[str, str]) -> str:
    value = _evaluate(_module_parameter("functionApp", "remediationKeys"), MAIN, _main_parameters(environment))
    assert isinstance(value, str)
    return value


VAULT_ID = "/subscriptions/s1/resourceGroups/rg-keys/providers/Microsoft.KeyVault/vaults/kv-prod"


def test_an_empty_remediation_allow_list_allows_nothing_in_settings_and_in_the_rendered_parameters():
    """With REMEDIATION_KEYS unset, even with remediation on and a remediation vault given, the app setting
    KEYHEALTH_REMEDIATION_KEYS renders empty, and the app's policy then allows no key."""
    environment = {"REMEDIATION_MODE": "on", "REMEDIATION_VAULT_IDS": VAULT_ID}
    assert _rendered_remediation_keys(environment) == ""
    assert _text(_app_settings().literal["KEYHEALTH_REMEDIATION_KEYS"]) == "remediationKeys"  # passed through as is
    policy = Settings.from_environment({"KEYHEALTH_REMEDIATION_KEYS": ""}).remediation_policy
    assert policy.keys == () and not policy.key_allowed("https://kv-prod.vault.azure.net", "sb-cmk")
    given = " https://kv-prod.vault.azure.net/keys/sb-cmk ,https://kv-prod.vault.azure.net/keys/sb-* "
    rendered = _rendered_remediation_keys({**environment, "REMEDIATION_KEYS": given})
    assert rendered == "https://kv-prod.vault.azure.net/keys/sb-cmk,https://kv-prod.vault.azure.net/keys/sb-*"
    assert Settings.from_environment({"KEYHEALTH_REMEDIATION_KEYS": rendered}).remediation_policy.key_allowed(
        "https://kv-prod.vault.azure.net", "sb-orders"
    )


VAULT_ACCESS = INFRA / "app" / "vault-access.bicep"


def _vault_access_deploys(**parameters: object) -> dict[str, int]:
    """How many of each role assignment (and custom role) vault-access.bicep would create for these parameters."""
    scope = {"vaultName": "kv-prod", "principalId": "p", "environmentName": "env", **parameters}
    counts = {}
    for resource in _resources(VAULT_ACCESS):
        if resource.type not in {"Microsoft.Authorization/roleAssignments", "Microsoft.Authorization/roleDefinitions"}:
            continue
        value = resource.declaration.children[-1]
        count = 1
        if value.type == "for_statement":
            iterated = next(c for c in value.children if c.type == "identifier")
            items = _evaluate(iterated, VAULT_ACCESS, scope)
            assert isinstance(items, list)
            count = len(items)
            value = next(c for c in value.children if c.type in {"object", "if_statement"})
        if value.type == "if_statement":
            condition = next(c for c in value.children if c.type == "parenthesized_expression")
            count *= int(bool(_evaluate(condition, VAULT_ACCESS, scope)))
        counts[resource.symbol] = count
    return counts


def _policy_permissions(**parameters: object) -> list[str]:
    scope = {"vaultName": "kv-prod", "principalId": "p", "environmentName": "env", **parameters}
    (policy,) = [r for r in _resources(VAULT_ACCESS) if r.type == "Microsoft.KeyVault/vaults/accessPolicies"]
    entries = _get(policy.body, "properties", "accessPolicies")
    assert entries is not None
    entry = next(c for c in entries.children if c.type == "object")
    keys = _get(entry, "permissions", "keys")
    assert keys is not None
    value = _evaluate(keys, VAULT_ACCESS, scope)
    assert isinstance(value, list)
    return value


ALLOW_LIST = [
    "https://kv-prod.vault.azure.net/keys/sb-cmk",
    "https://KV-PROD.vault.azure.net/keys/SB-Orders",
    "https://kv-prod.managedhsm.azure.net/keys/hsm-key",  # the same name, a Managed HSM: not this vault
    "https://kv-prod.vault.azure.cn/keys/cn-key",  # the same name in another cloud: not this vault
    "https://kv-prod2.vault.azure.net/keys/other",  # a longer vault name: not this vault
    "https://kv-dr.vault.azure.net/keys/sb-*",
]


def test_crypto_officer_is_granted_on_each_allow_listed_key_not_on_the_vault():
    """An RBAC vault gets Key Vault Crypto Officer once per key that a pattern on its exact host names, scoped to
    that key; on the vault only for a wildcard pattern; a recover-only role on the vault when recover is allowed;
    nothing at all when the allow-list names none of its keys or remediation is not on here."""
    on = {"remediate": True, "accessPolicy": False, "rotate": True, "recover": True}
    named = _vault_access_deploys(**on, keyPatterns=ALLOW_LIST)
    assert named == {
        "keyVaultReader": 1,
        "keyCryptoOfficer": 2,  # sb-cmk and sb-orders
        "vaultCryptoOfficer": 0,
        "recoverRole": 1,
        "recoverAssignment": 1,
    }
    wildcard = _vault_access_deploys(**on, keyPatterns=[*ALLOW_LIST, "https://kv-prod.vault.azure.net/keys/sb-*"])
    assert (wildcard["keyCryptoOfficer"], wildcard["vaultCryptoOfficer"]) == (2, 1)
    rotate_only = _vault_access_deploys(**{**on, "recover": False}, keyPatterns=ALLOW_LIST)
    assert (rotate_only["keyCryptoOfficer"], rotate_only["recoverAssignment"]) == (2, 0)
    nothing = {"keyVaultReader": 1, "keyCryptoOfficer": 0, "vaultCryptoOfficer": 0, "recoverRole": 0}
    for parameters in (
        {**on, "keyPatterns": []},  # the empty allow-list
        {**on, "keyPatterns": ALLOW_LIST[2:]},  # patterns on other hosts only
        {**on, "remediate": False, "keyPatterns": ALLOW_LIST},
        {**on, "accessPolicy": True, "keyPatterns": ALLOW_LIST},  # RBAC roles do not apply there
    ):
        deployed = _vault_access_deploys(**parameters)
        assert {k: deployed[k] for k in nothing} == nothing, parameters
        assert deployed["recoverAssignment"] == 0, parameters
    # The key-scoped assignment's scope is the existing key resource, one per name.
    (assignment,) = [r for r in _resources(VAULT_ACCESS) if r.symbol == "keyCryptoOfficer"]
    scope_node = _get(assignment.body, "scope")
    assert scope_node is not None and _text(scope_node) == "allowedKeys[index]"
    (keys,) = [r for r in _resources(VAULT_ACCESS) if r.symbol == "allowedKeys"]
    assert keys.type == "Microsoft.KeyVault/vaults/keys" and " existing " in _text(keys.declaration)


def test_an_access_policy_vault_gets_write_permissions_only_for_what_the_allow_list_asks():
    """Access policies are vault-wide: read always; create, rotate, getrotationpolicy and recover only when
    remediation is on here, the allow-list names a key of this vault, and the action is allowed."""
    base = {"remediate": True, "accessPolicy": True, "rotate": True, "recover": True}
    assert _policy_permissions(**base, keyPatterns=ALLOW_LIST) == [
        "get",
        "list",
        "create",
        "rotate",
        "getrotationpolicy",
        "recover",
    ]
    assert _policy_permissions(**{**base, "rotate": False}, keyPatterns=ALLOW_LIST) == ["get", "list", "recover"]
    assert _policy_permissions(**base, keyPatterns=[]) == ["get", "list"]
    assert _policy_permissions(**{**base, "remediate": False}, keyPatterns=ALLOW_LIST) == ["get", "list"]


def test_main_passes_the_allow_list_and_actions_to_each_vault():
    """vaultAccess gets the same patterns the app setting gets, and which of rotate and recover are allowed."""
    parameters = _main_parameters(
        {"REMEDIATION_KEYS": "https://kv-prod.vault.azure.net/keys/sb-cmk", "REMEDIATION_ACTIONS": "recover"}
    )
    patterns = _evaluate(_module_parameter("vaultAccess", "keyPatterns"), MAIN, parameters)
    assert patterns == ["https://kv-prod.vault.azure.net/keys/sb-cmk"]
    assert _evaluate(_module_parameter("vaultAccess", "rotate"), MAIN, parameters) is False
    assert _evaluate(_module_parameter("vaultAccess", "recover"), MAIN, parameters) is True


# --- metric alerts -------------------------------------------------------------------------------------------------


def _instrument_names() -> set[str]:
    """The metric names monitor/app/telemetry.py creates instruments with."""
    module = ast.parse((ROOT / "monitor" / "app" / "telemetry.py").read_text())
    names = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith("create_"):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def test_metric_alerts_watch_metrics_the_code_emits():
    """Every alert rule's metric is an instrument of monitor/app/telemetry.py; revocation, blindness and failing alert
    delivery are each watched."""
    emitted = _instrument_names()
    assert "keyhealth.monitor.blind" in emitted
    watched = set()
    for rule in _all_resources("Microsoft.Insights/metricAlerts"):
        criteria = _get(rule.body, "properties", "criteria", "allOf")
        assert criteria is not None
        for criterion in (c for c in criteria.children if c.type == "object"):
            watched.add(_literal(_get(criterion, "metricName")))
        actions = _get(rule.body, "properties", "actions")
        assert actions is not None
        notified = _variables(rule.path).get(_text(actions), actions)
        assert "actionGroupId" in _text(notified), rule.symbol
    assert watched <= emitted
    assert {
        "keyhealth.namespace.revocation.seconds",
        "keyhealth.monitor.blind",
        "keyhealth.alerts.deliveries",
    } <= watched


ALERTS = INFRA / "app" / "alerts.bicep"


def test_a_log_alert_fires_when_no_poll_completed_for_three_periods():
    """keyhealth-monitor-not-polling counts the completed polls (keyhealth.polls, outcome ok) in customMetrics over
    the last 3 x 5 minutes, evaluated every 5 minutes, and fires below one: its summarize has no grouping, so a dead
    app (no rows at all) yields a row of 0 and alerts. Severity 1 on the same Application Insights and action group
    as the metric rules."""
    (rule,) = _all_resources("Microsoft.Insights/scheduledQueryRules")
    assert rule.path == ALERTS and not rule.conditional
    properties = _get(rule.body, "properties")
    scope: dict[str, object] = {
        "actionGroupId": "/subscriptions/s/resourceGroups/g/providers/microsoft.insights/actionGroups/oncall"
    }

    def value(*path: str) -> object:
        node = _get(properties, *path)
        assert node is not None, path
        return _evaluate(node, ALERTS, scope)

    assert _literal(_get(rule.body, "kind")) == "LogAlert"
    assert (value("evaluationFrequency"), value("windowSize")) == ("PT5M", "PT15M")
    assert value("severity") == 1 and value("enabled") is True and value("autoMitigate") is True
    metric_rules = _all_resources("Microsoft.Insights/metricAlerts")
    assert {_text(_get(r.body, "properties", "scopes") or r.body) for r in metric_rules} == {
        _text(_get(properties, "scopes") or rule.body)
    }
    (criterion,) = [c for c in (_get(properties, "criteria", "allOf") or rule.body).children if c.type == "object"]
    query = _evaluate(_get(criterion, "query") or criterion, ALERTS, scope)
    assert isinstance(query, str)
    stages = [stage.strip() for stage in query.split("|")]
    assert stages[0] == "customMetrics" and "where timestamp > ago(15m)" in stages
    assert 'name == "keyhealth.polls"' in query and "keyhealth.polls" in _instrument_names()
    assert 'tostring(customDimensions.outcome) == "ok"' in query
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    polls_row = next(line for line in readme.splitlines() if line.startswith("| `keyhealth.polls` |"))
    assert "ok" in polls_row.split("|")[4]  # an outcome the poll reports
    summarize = re.fullmatch(r"summarize (\w+) = count\(\)", stages[-1])
    assert summarize is not None, stages[-1]  # no "by": absence is a row of 0, not no rows
    assert _literal(_get(criterion, "metricMeasureColumn")) == summarize.group(1)
    assert _literal(_get(criterion, "timeAggregation")) == "Total"
    assert (
        _literal(_get(criterion, "operator")),
        _evaluate(_get(criterion, "threshold") or criterion, ALERTS, {}),
    ) == (
        "LessThan",
        1,
    )
    assert value("actions", "actionGroups") == [scope["actionGroupId"]]
    assert _evaluate(_get(properties, "actions", "actionGroups") or rule.body, ALERTS, {"actionGroupId": ""}) == []


# --- azure.yaml ----------------------------------------------------------------------------------------------------


def test_azure_yaml_deploys_this_directory_as_the_monitor_function_app():
    """Service `monitor` is a Python Functions app whose project holds function_app.py and host.json."""
    project = yaml.safe_load((ROOT / "azure.yaml").read_text())
    service = project["services"]["monitor"]
    assert (service["language"], service["host"]) == ("python", "function")
    folder = (ROOT / service["project"]).resolve()
    assert (folder / "function_app.py").is_file() and (folder / "host.json").is_file()
    assert (folder / "requirements.txt").is_file()
    infra = project.get("infra", {})
    assert (ROOT / infra.get("path", "infra") / f"{infra.get('module', 'main')}.bicep").is_file()


def test_azure_yaml_hooks_exist_and_wire_event_grid_after_deploy():
    """Each hook's script is in the repository (shell ones executable); postdeploy sets EVENT_GRID_WIRED, the
    environment value main.parameters.json feeds to wireEventGrid."""
    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
    assert "postdeploy" in hooks
    for hook in hooks.values():
        for platform in ("posix", "windows"):
            script = ROOT / hook[platform]["run"]
            assert script.is_file(), script
            if platform == "posix":
                assert os.access(script, os.X_OK), f"{script} is not executable"
    posix = (ROOT / hooks["postdeploy"]["posix"]["run"]).read_text()
    assert "azd env set EVENT_GRID_WIRED true" in posix and "azd provision" in posix
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert parameters["wireEventGrid"]["value"].startswith("${EVENT_GRID_WIRED")


def test_azd_down_is_refused_unless_the_operator_allows_it():
    """The predown hook stops azd down (which deletes whole resource groups, the vaults' too on older azd) unless
    ALLOW_AZD_DOWN is true."""
    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]
    guard = ROOT / hooks["predown"]["posix"]["run"]
    environment = {k: v for k, v in os.environ.items() if k != "ALLOW_AZD_DOWN"}
    refused = subprocess.run(["sh", str(guard)], env=environment, capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "azd down is blocked" in refused.stderr
    allowed = subprocess.run(
        ["sh", str(guard)], env={**environment, "ALLOW_AZD_DOWN": "true"}, capture_output=True, check=False
    )
    assert allowed.returncode == 0
