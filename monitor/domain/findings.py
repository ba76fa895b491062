"""Findings with severities, from a namespace's prediction and the warning/critical thresholds.

Each message is written for the person on call: what is wrong, when, and the command that fixes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitor.domain.documents import format_instant
from monitor.domain.model import KeyRef, Namespace, is_managed_hsm, resource_group_of, vault_short_name
from monitor.domain.observed import CONFIRMING_POLLS
from monitor.domain.prediction import NamespacePrediction, Status
from monitor.domain.states import VaultState
from monitor.domain.usability import VERSION_REASONS, Assessment, Reason, assess, assess_as, version_reasons
from monitor.domain.world import World


class Severity(enum.IntEnum):
    """How urgent a finding is; ordered so that max() picks the worst."""

    INFO = 0
    WARNING = 1
    CRITICAL = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class Code(enum.Enum):
    """Every finding code of the scenario format."""

    REVOCATION_PREDICTED = "revocation-predicted"
    KEY_EXPIRING = "key-expiring"
    KEY_EXPIRED = "key-expired"
    KEY_DISABLED = "key-disabled"
    KEY_NOT_YET_VALID = "key-not-yet-valid"
    KEY_DELETED = "key-deleted"
    KEY_MISSING = "key-missing"
    KEY_OPS_MISSING = "key-ops-missing"
    ACCESS_DENIED = "access-denied"
    IDENTITY_MISSING = "identity-missing"
    VERSION_PINNED = "version-pinned"
    NEW_VERSION_UNUSABLE = "new-version-unusable"
    NO_REDUNDANCY = "no-redundancy"
    VAULT_MISSING = "vault-missing"
    VAULT_FIREWALL = "vault-firewall-blocks-service"
    VAULT_SOFT_DELETE_OFF = "vault-soft-delete-off"
    VAULT_PURGE_PROTECTION_OFF = "vault-purge-protection-off"
    MONITOR_BLIND = "monitor-blind"
    # Extensions to the format's codes: a Geo-DR pairing judged for its partner.
    GEO_DR_PARTNER_CANNOT_USE_KEY = "geo-dr-partner-cannot-use-key"
    GEO_DR_PARTNER_UNKNOWN = "geo-dr-partner-unknown"
    # Extensions: the service's own key accesses, observed in Key Vault's audit logs.
    SERVICE_ACCESS_FAILING = "service-access-failing"
    KEY_DROPPED_FROM_RECORD = "key-dropped-from-record"
    DIAGNOSTICS_MISSING = "diagnostics-missing"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How far ahead a predicted loss is a warning, and when it becomes critical."""

    warning: timedelta = timedelta(days=30)
    critical: timedelta = timedelta(days=7)

    def severity_for(self, remaining: timedelta) -> Severity:
        if remaining <= self.critical:
            return Severity.CRITICAL
        if remaining <= self.warning:
            return Severity.WARNING
        return Severity.INFO


@dataclass(frozen=True, slots=True)
class Finding:
    """One condition on one key reference (or, with `key` None, on the namespace)."""

    code: Code
    severity: Severity
    key: str | None
    message: str
    version: str | None = None
    at: datetime | None = None  # when the condition bites, for time-bound findings


def humanize(delta: timedelta) -> str:
    """'in 6 days 4 hours', '3 minutes ago', 'now': the two largest units, for people."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "now"
    remaining = abs(seconds)
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
        if len(parts) == 2:
            break
    text = " ".join(parts)
    return f"in {text}" if seconds > 0 else f"{text} ago"


def _when(t: datetime, now: datetime) -> str:
    return f"{format_instant(t)} ({humanize(t - now)})"


class _Commands:
    """`az` command lines that fix a finding, filled in for one reference of one namespace."""

    def __init__(self, namespace: Namespace, ref: KeyRef) -> None:
        self.namespace = namespace
        self.ref = ref
        self.hsm = is_managed_hsm(ref.vault)
        store = "--hsm-name" if self.hsm else "--vault-name"
        self.key_args = f"{store} {vault_short_name(ref.vault)} --name {ref.name}"
        self.vault_name = vault_short_name(ref.vault)
        self.store = f"Managed HSM {self.vault_name}" if self.hsm else f"vault {self.vault_name}"
        self.group = namespace.resource_group or "<resource-group>"

    def update_store(self, options: str) -> str:
        """The command that changes the vault's (or HSM's) own settings."""
        if self.hsm:
            return f"az keyvault update-hsm --hsm-name {self.vault_name} {options}"
        return f"az keyvault update --name {self.vault_name} {options}"

    @property
    def recover_store(self) -> str:
        store = "--hsm-name" if self.hsm else "--name"
        return f"az keyvault recover {store} {self.vault_name}"

    def set_attributes(self, version: str, option: str) -> str:
        return f"az keyvault key set-attributes {self.key_args} --version {version} {option}"

    @property
    def rotate(self) -> str:
        return f"az keyvault key rotate {self.key_args}"

    @property
    def recover_key(self) -> str:
        return f"az keyvault key recover {self.key_args}"

    def grant(self, principal: str, rbac: bool) -> str:
        if self.hsm:  # an HSM's own local RBAC, at the key's scope: ARM role assignments do not reach its keys
            return (
                f"az keyvault role assignment create --hsm-name {self.vault_name} "
                f'--role "Managed HSM Crypto Service Encryption User" --assignee-object-id {principal} '
                f"--assignee-principal-type ServicePrincipal --scope /keys/{self.ref.name}"
            )
        if rbac:
            scope = f"$(az keyvault show --name {self.vault_name} --query id -o tsv)"
            return (
                'az role assignment create --role "Key Vault Crypto Service Encryption User" '
                f"--assignee-object-id {principal} --assignee-principal-type ServicePrincipal --scope {scope}"
            )
        return (
            f"az keyvault set-policy --name {self.vault_name} --object-id {principal} "
            "--key-permissions get wrapKey unwrapKey"
        )

    @property
    def add_versionless(self) -> str:
        config = f"key-name={self.ref.name} key-vault-uri={self.ref.vault.rstrip('/')}"
        if self.ref.identity:
            config += f" user-assigned-identity={self.ref.identity}"
        return (
            f"az {self.namespace.kind.cli} namespace encryption add --namespace-name {self.namespace.name} "
            f"-g {self.group} --encryption-config {config}"
        )


def findings_for(prediction: NamespacePrediction, world: World, thresholds: Thresholds) -> list[Finding]:
    """Every finding for one namespace, worst first."""
    return FindingsJudge(world, thresholds).findings(prediction)


class FindingsJudge:
    """Findings for predictions against one World: what every namespace asks of a vault is looked up once."""

    def __init__(self, world: World, thresholds: Thresholds) -> None:
        self.world = world
        self.thresholds = thresholds
        # Vault URI as a reference spells it -> the vault's state at `_vaults_at` (None: no such vault), and
        # whether its configuration deserves findings. A fleet names each vault tens of thousands of times.
        self._vaults: dict[str, tuple[VaultState | None, bool]] = {}
        self._vaults_at: datetime | None = None

    def _vault_at(self, uri: str, now: datetime) -> tuple[VaultState | None, bool]:
        """What `_vaults` holds for `uri`, once `_vaults_at` is `now`."""
        world = self.world
        vault = world.vault_id(uri)
        vault_timeline = world.vaults.get(vault)
        state = vault_timeline.at(now) if vault_timeline is not None else None
        misconfigured = (
            state is not None
            and state.exists
            and not (state.soft_delete and state.purge_protection)
            and vault not in world.blind_vaults
        )
        found = self._vaults[uri] = (state, misconfigured)
        return found

    def findings(self, prediction: NamespacePrediction) -> list[Finding]:
        """Every finding for one namespace, worst first."""
        world, thresholds = self.world, self.thresholds
        namespace = prediction.namespace
        now = prediction.now
        findings: list[Finding] = []
        status = prediction.status_now
        if prediction.stretches:  # most namespaces have none, and no revocation finding
            revocation = _revocation_finding(prediction, status, thresholds)
            if revocation is not None:
                findings.append(revocation)
        # A broken reference costs redundancy while another still works; it is the outage when none does.
        impact = Severity.CRITICAL if status is Status.REVOKED else Severity.WARNING
        horizon = prediction.horizon
        warning = thresholds.warning
        if now != self._vaults_at:
            self._vaults.clear()
            self._vaults_at = now
        vaults = self._vaults
        usable_intervals = prediction.usable_intervals
        for index, (ref, assessment) in enumerate(zip(namespace.keys, prediction.assessments_now, strict=True)):
            if assessment.unknown:
                findings.append(_blind_finding(namespace, ref, assessment))
            vault_state, misconfigured = vaults.get(ref.vault) or self._vault_at(ref.vault, now)
            if misconfigured:
                assert vault_state is not None  # noqa: S101 - narrows the type; holds by construction
                findings.extend(_vault_config_findings(ref, vault_state, namespace.kind.service))
            # The commands are spelled out only for a reference that has something to report: most have nothing.
            if assessment.reasons:
                commands = _Commands(namespace, ref)
                for reason in assessment.reasons:
                    findings.append(_reason_finding(reason, impact, assessment, vault_state, commands, now))
                broken_rotation = _broken_rotation(world, ref, assessment, impact, commands, now)
                if broken_rotation is not None:
                    findings.append(broken_rotation)
            if ref.version is not None:
                findings.append(_pinned_finding(world, ref, assessment, _Commands(namespace, ref), now))
            # Most usable references stay usable to the horizon, or past the warning threshold: nothing to say.
            intervals = usable_intervals[index]
            if intervals and intervals[0][1] < horizon and intervals[0][1] - now <= warning and assessment.usable:
                expiring = _expiring_finding(prediction, world, index, thresholds)
                if expiring is not None:
                    findings.append(expiring)
        if status is Status.HEALTHY:
            usable_now = len(namespace.keys)  # every listed reference is usable
        elif status is Status.DEGRADED:
            usable_now = prediction.usable_keys_now
        else:
            usable_now = 0  # revoked, or unknown: nothing to say about redundancy
        if usable_now == 1:
            findings.append(_no_redundancy(prediction))
        if namespace.geo_dr is not None and namespace.geo_dr.is_primary:
            findings.extend(self._geo_dr_findings(prediction))
        if namespace.observed is not None:
            findings.extend(_observed_findings(prediction))
        if len(findings) > 1:
            # Worst first; within a severity the causes come before the namespace-level consequence.
            findings.sort(key=_finding_order)
        return findings

    def _geo_dr_findings(self, prediction: NamespacePrediction) -> list[Finding]:
        """The primary's keys judged for its Geo-DR partner (rule 2 with the identity the partner would use;
        the other rules as for the primary), at `now`: a failover makes the partner poll the same keys."""
        namespace = prediction.namespace
        pairing = namespace.geo_dr
        assert pairing is not None  # noqa: S101 - narrows the type; holds by construction
        partner = pairing.partner_name
        if pairing.partner_identity is None:
            return [
                Finding(
                    Code.GEO_DR_PARTNER_UNKNOWN,
                    Severity.WARNING,
                    None,
                    f"partner {partner} could not be read (Geo-DR alias {pairing.alias}), so whether a failover "
                    f"would revoke it is unknown: {pairing.partner_blind or 'not read'}. Give the monitor Reader on "
                    "the partner's subscription.",
                )
            ]
        now = prediction.now
        partner_own = (Reason.IDENTITY_MISSING, Reason.ACCESS_DENIED)
        judged = []
        for ref, own in zip(namespace.keys, prediction.assessments_now, strict=True):
            principal = pairing.partner_identity.principal_for(ref.identity)
            as_partner = assess_as(self.world, ref, principal, now)
            # What fails only for the partner: the primary's own findings already tell the rest.
            lacking = [r for r in as_partner.reasons if r in partner_own and r not in own.reasons]
            judged.append((ref, as_partner, lacking))
        partner_usable = any(a.usable for _, a, _ in judged)
        primary_usable = prediction.usable_keys_now > 0
        would_revoke = not partner_usable and primary_usable and not any(a.is_unknown for _, a, _ in judged)
        severity = Severity.CRITICAL if would_revoke else Severity.WARNING
        head = f"failover would revoke {partner}" if would_revoke else f"at failover {partner} could not use this key"
        group = resource_group_of(pairing.partner) or "<resource-group>"
        findings = []
        for ref, as_partner, lacking in judged:
            if not lacking:
                continue
            commands = _Commands(namespace, ref)
            through = f"user-assigned identity {ref.identity}" if ref.identity else "its system-assigned identity"
            if Reason.IDENTITY_MISSING in lacking:
                assign = f"--user-assigned {ref.identity}" if ref.identity else "--system-assigned"
                fix = (
                    f"{partner} does not have it: az {namespace.kind.cli} namespace identity assign --namespace-name "
                    f"{partner} -g {group} {assign}, then grant it get, wrapKey and unwrapKey on vault "
                    f"{commands.vault_name}"
                )
            else:
                principal = as_partner.principal or "<principal-id>"
                vault_state, _ = self._vaults.get(ref.vault) or self._vault_at(ref.vault, now)
                missing = ", ".join(vault_state.missing_permissions(principal)) if vault_state else "the permissions"
                fix = (
                    f"principal {principal} lacks {missing}: "
                    f"{commands.grant(principal, vault_state.rbac if vault_state else False)}"
                )
            findings.append(
                Finding(
                    Code.GEO_DR_PARTNER_CANNOT_USE_KEY,
                    severity,
                    ref.url,
                    f"{head} (Geo-DR alias {pairing.alias}): after a failover the secondary {partner} uses key "
                    f"{ref.name} in vault {commands.vault_name} through {through}; {fix}",
                    version=ref.version,
                )
            )
        return findings


# A failover's findings are about the partner: within a severity the namespace's own come first.
_PARTNER_CODES = frozenset({Code.GEO_DR_PARTNER_CANNOT_USE_KEY, Code.GEO_DR_PARTNER_UNKNOWN})


def _finding_order(finding: Finding) -> tuple[int, bool, bool, str, str]:
    return (
        -finding.severity,
        finding.code in _PARTNER_CODES,
        finding.code is Code.REVOCATION_PREDICTED,
        finding.code.value,
        finding.key or "",
    )


def _revocation_finding(prediction: NamespacePrediction, status: Status, thresholds: Thresholds) -> Finding | None:
    earliest = prediction.revoked_at_earliest
    if earliest is None:
        return None
    now = prediction.now
    revoked_by = prediction.revoked_by
    first = prediction.stretches[0]
    why = _why(prediction.assessments_at_revocation or ())
    advice = "Restore any one of the listed keys before then."
    if status is Status.REVOKED:
        by = format_instant(revoked_by or earliest)
        head = f"no listed key is usable now: the next poll revokes the namespace, by {by}"
        advice = "Restore any one of the listed keys: the first poll that finds one usable recovers the namespace."
    elif first.certain and revoked_by is not None:
        head = (
            f"would go Revoked between {format_instant(earliest)} and {format_instant(revoked_by)}"
            f" ({humanize(earliest - now)})"
        )
    else:
        gap = humanize(first.end - first.start).removeprefix("in ")
        head = (
            f"may go Revoked at {_when(earliest, now)}: no key is usable for {gap}, shorter than the 5-minute "
            "poll, so revocation is possible, not certain"
        )
        head += f"; certain by {format_instant(revoked_by)}" if revoked_by else ""
    exact = prediction.revoked_at
    if exact is not None:
        service = prediction.namespace.kind.service
        head += f"; {service}'s own poll at {format_instant(exact)} is the one (its poll phase, from the audit log)"
    return Finding(
        code=Code.REVOCATION_PREDICTED,
        severity=thresholds.severity_for(earliest - now),
        key=None,
        message=f"{head}. Why: {why}. {advice}",
        at=earliest,
    )


def _why(assessments: tuple[Assessment, ...]) -> str:
    parts = []
    for assessment in assessments:
        reasons = ", ".join(r.value for r in assessment.reasons) or "usable"
        parts.append(f"{assessment.ref.url} {reasons}")
    return "; ".join(parts)


def _blind_finding(namespace: Namespace, ref: KeyRef, assessment: Assessment) -> Finding:
    seen_failing = ", ".join(r.value for r in assessment.reasons)
    if seen_failing:
        consequence = f"the reference is unusable anyway ({seen_failing})"
    else:
        consequence = f"namespace {namespace.name} is unknown until it can be read: not healthy, not revoked"
    return Finding(
        Code.MONITOR_BLIND,
        Severity.WARNING,
        ref.url,
        f"the monitor could not read what decides {ref.url}: {'; '.join(assessment.unknown)}. {consequence}. "
        "Check the monitor identity's roles (Reader on the namespaces' and vaults' subscriptions, Key Vault "
        "Reader on the vault) and the vault's network rules.",
        version=ref.version,
    )


def _vault_config_findings(ref: KeyRef, vault: VaultState, service: str) -> list[Finding]:
    hsm = is_managed_hsm(ref.vault)
    name = vault_short_name(ref.vault)
    store = f"Managed HSM {name}" if hsm else f"vault {name}"
    update = f"az keyvault update-hsm --hsm-name {name}" if hsm else f"az keyvault update --name {name}"
    findings = []
    if not vault.soft_delete:
        findings.append(
            Finding(
                Code.VAULT_SOFT_DELETE_OFF,
                Severity.WARNING,
                ref.url,
                f"{store} has soft delete off: a deleted key is gone at once and so is the namespace's "
                f"data; {service} CMK requires it: {update} --enable-soft-delete true",
            )
        )
    if not vault.purge_protection:
        findings.append(
            Finding(
                Code.VAULT_PURGE_PROTECTION_OFF,
                Severity.WARNING,
                ref.url,
                f"{store} has purge protection off: a deleted key can be purged before anyone recovers it; "
                f"{service} CMK requires it: {update} --enable-purge-protection true",
            )
        )
    return findings


# Said of every change a Managed HSM key's finding reports: Key Vault's events do not cover an HSM.
HSM_POLL_ONLY = "; a Managed HSM sends no Event Grid events, so only the poll sees this"


def _reason_finding(
    reason: Reason,
    impact: Severity,
    assessment: Assessment,
    vault: VaultState | None,
    commands: _Commands,
    now: datetime,
) -> Finding:
    ref = assessment.ref
    version = assessment.version
    version_id = version.version if version is not None else ref.version or "current"
    label = f"key {ref.name} in {vault_short_name(ref.vault)}"
    if reason is Reason.VAULT_MISSING:
        message = f"{commands.store} does not exist: recover it within its retention period: {commands.recover_store}"
    elif reason is Reason.VAULT_FIREWALL:
        message = (
            f"{commands.store}'s firewall keeps {commands.namespace.kind.service} out (not open to all networks, "
            f"and trusted Microsoft services may not bypass it): let them: "
            f"{commands.update_store('--bypass AzureServices')}"
        )
    elif reason is Reason.IDENTITY_MISSING:
        who = f"user-assigned identity {ref.identity}" if ref.identity else "a system-assigned identity"
        assign = f"--user-assigned {ref.identity}" if ref.identity else "--system-assigned"
        message = (
            f"{label} is used through {who}, which namespace {commands.namespace.name} does not have: "
            f"az {commands.namespace.kind.cli} namespace identity assign --namespace-name {commands.namespace.name} "
            f"-g {commands.group} {assign}, then grant it get, wrapKey and unwrapKey"
        )
    elif reason is Reason.ACCESS_DENIED:
        principal = assessment.principal or "<principal-id>"
        missing = ", ".join(vault.missing_permissions(principal)) if vault else "get, wrapKey, unwrapKey"
        message = (
            f"principal {principal} lacks {missing} on {commands.store}: re-grant them: "
            f"{commands.grant(principal, vault.rbac if vault else False)}"
        )
    elif reason is Reason.KEY_MISSING:
        if ref.version is not None:
            message = (
                f"{label} has no version {ref.version}: point the namespace at an existing version or unpin it: "
                f"{commands.add_versionless}"
            )
        else:
            message = (
                f"{label} does not exist (never created, or purged); data it protected cannot be decrypted: "
                "list another key on the namespace and restore the key from backup if one exists"
            )
    elif reason is Reason.KEY_DELETED:
        message = f"{label} is soft-deleted: recover it within the retention period: {commands.recover_key}"
    elif reason is Reason.KEY_DISABLED:
        enable = commands.set_attributes(version_id, "--enabled true")
        message = f"{label} version {version_id} is disabled: re-enable it: {enable}"
    elif reason is Reason.KEY_NOT_YET_VALID:
        nbf = version.nbf if version is not None else None
        since = f" until {_when(nbf, now)}" if nbf is not None else ""
        message = (
            f"{label} version {version_id} is not valid{since} (nbf): "
            f"{commands.set_attributes(version_id, '--not-before ' + format_instant(now))}"
        )
    elif reason is Reason.KEY_EXPIRED:
        exp = version.exp if version is not None else None
        since = f" since {_when(exp, now)}" if exp is not None else ""
        fix = (
            f"extend it: {commands.set_attributes(version_id, '--expires <new-date>')}"
            if ref.version is not None
            else f"rotate (the namespace picks up the new version at its next poll): {commands.rotate}"
        )
        message = f"{label} version {version_id} expired{since}: {fix}"
    else:  # Reason.KEY_OPS_MISSING
        ops = ", ".join(version.key_ops or ()) if version is not None else ""
        message = (
            f"{label} version {version_id} allows only [{ops}], not both wrapKey and unwrapKey: "
            f"{commands.set_attributes(version_id, '--ops wrapKey unwrapKey')}"
        )
    if commands.hsm:
        message += HSM_POLL_ONLY
    return Finding(Code(reason.value), impact, ref.url, message, version=ref.version)


def _broken_rotation(
    world: World, ref: KeyRef, assessment: Assessment, impact: Severity, commands: _Commands, now: datetime
) -> Finding | None:
    current = assessment.version
    if ref.version is not None or current is None or VERSION_REASONS.isdisjoint(assessment.reasons):
        return None
    key_state = world.key(ref.key_id).at(now)
    older = [v for v in key_state.versions if v.created < current.created and not version_reasons(v, now)]
    if not older:
        return None
    problems = ", ".join(r.value for r in assessment.reasons if r in VERSION_REASONS)
    return Finding(
        Code.NEW_VERSION_UNUSABLE,
        impact,
        ref.url,
        f"the current version {current.version} of key {ref.name} is unusable ({problems}) while older version "
        f"{older[-1].version} would be: the rotation broke the namespace; fix the new version or rotate again: "
        f"{commands.rotate}",
        at=current.created,
    )


def _pinned_finding(world: World, ref: KeyRef, assessment: Assessment, commands: _Commands, now: datetime) -> Finding:
    assert ref.version is not None  # noqa: S101 - narrows the type; holds by construction
    key_state = world.key(ref.key_id).at(now)
    current = key_state.current_version(now)
    pinned = assessment.version
    rotated_past = current is not None and pinned is not None and current is not pinned
    expires = pinned.exp if pinned is not None else None
    detail = []
    if rotated_past and current is not None:
        detail.append(f"the key has rotated to {current.version} but the namespace stays on the pinned version")
    if expires is not None:
        detail.append(f"the namespace is disabled when it expires at {_when(expires, now)}")
    severity = Severity.WARNING if rotated_past or expires is not None else Severity.INFO
    message = (
        f"namespace {commands.namespace.name} is pinned to version {ref.version} of key {ref.name}"
        + (f": {'; '.join(detail)}" if detail else ": rotation will not be picked up")
        + f". Unpin it (add a versionless entry, then remove the pinned one): {commands.add_versionless}"
    )
    return Finding(Code.VERSION_PINNED, severity, ref.url, message, version=ref.version, at=expires)


def _expiring_finding(
    prediction: NamespacePrediction, world: World, index: int, thresholds: Thresholds
) -> Finding | None:
    intervals = prediction.usable_intervals[index]
    if not intervals or intervals[0][0] != prediction.now:
        return None
    ends = intervals[0][1]
    now = prediction.now
    if ends >= prediction.horizon or ends - now > thresholds.warning:
        return None
    namespace = prediction.namespace
    ref = namespace.keys[index]
    after = assess(world, namespace, ref, ends)
    if Reason.KEY_EXPIRED not in after.reasons:
        return None
    severity = thresholds.severity_for(ends - now)
    survives = not any(s.start <= ends < s.end for s in prediction.stretches)
    if survives:  # another listed key covers that moment: redundancy is lost, not the namespace
        severity = Severity(max(severity - 1, Severity.INFO))
    version_id = after.version.version if after.version is not None else "current"
    commands = _Commands(namespace, ref)
    fix = (
        commands.rotate
        if ref.version is None
        else f"{commands.set_attributes(version_id, '--expires <new-date>')} or unpin: {commands.add_versionless}"
    )
    consequence = "another listed key stays usable" if survives else "no other listed key is usable then"
    return Finding(
        Code.KEY_EXPIRING,
        severity,
        ref.url,
        f"key {ref.name} version {version_id} expires at {_when(ends, now)}; {consequence}: {fix}"
        + (HSM_POLL_ONLY if commands.hsm else ""),
        version=ref.version,
        at=ends,
    )


def _no_redundancy(prediction: NamespacePrediction) -> Finding:
    usable = next(a for a in prediction.assessments_now if a.usable)
    total = prediction.keys_total
    commands = _Commands(prediction.namespace, usable.ref)
    severity = Severity.WARNING if total > 1 else Severity.INFO
    lost = f" ({total - 1} of the {total} listed keys are unusable)" if total > 1 else ""
    return Finding(
        Code.NO_REDUNDANCY,
        severity,
        usable.ref.url,
        f"only {usable.ref.url} is usable{lost}: one more deleted, disabled or expired key revokes the namespace; "
        f"list a second key from another vault (up to 3): az {prediction.namespace.kind.cli} namespace encryption add "
        f"--namespace-name {prediction.namespace.name} -g {commands.group} --encryption-config key-name=<key> "
        "key-vault-uri=<vault-uri>",
        version=usable.ref.version,
    )


def _observed_findings(prediction: NamespacePrediction) -> list[Finding]:
    """What the service's own calls show that the monitor's reading cannot: a call failing on a key the monitor
    reads as usable, a key the service dropped from its record, or no audit logs to observe with."""
    namespace = prediction.namespace
    service = namespace.kind.service
    observation = prediction.observation
    if observation is None:
        return []
    if not observation.known:
        if not observation.diagnostics_missing:
            return []  # a failed query: the observation is unknown, and says why; nothing is claimed
        return [
            Finding(
                Code.DIAGNOSTICS_MISSING,
                Severity.INFO,
                None,
                f"{service}'s own key accesses for {namespace.name} cannot be observed: {observation.unobserved}; "
                "send each vault's AuditEvent logs to the monitor's workspace: az monitor diagnostic-settings "
                "create --name keyhealth-audit --resource <vault resource id> --workspace <workspace resource id> "
                '--logs \'[{"category":"AuditEvent","enabled":true}]\'',
            )
        ]
    findings = []
    now = prediction.now
    # Whether any listed key's latest call served: if none did, the service is failing the namespace now.
    served = any(seen.last_status is not None and not seen.failing and not seen.dropped for seen in observation.keys)
    phase = observation.phase
    # " at <instant>" of the service's next poll, once its phase is known.
    at_next = f" at {format_instant(phase.next_poll(now))}" if phase is not None and phase.known else ""
    for ref, assessment, seen in zip(namespace.keys, prediction.assessments_now, observation.keys, strict=True):
        label = f"key {ref.name} in {vault_short_name(ref.vault)}"
        # Dropped first: its latest call failed too, but the service has moved on from it.
        if seen.dropped:
            if not assessment.usable:
                continue  # the monitor's own finding says why the key is unusable; dropped is its consequence
            commands = _Commands(namespace, ref)
            failed = (
                f"after its call failed (HTTP {seen.last_status} {_when(seen.last_failure, now)})"
                if seen.last_failure is not None and seen.last_status is not None
                else "(its latest polls did not call it; the failure that dropped it is older than the window observed)"
            )
            findings.append(
                Finding(
                    Code.KEY_DROPPED_FROM_RECORD,
                    Severity.WARNING,
                    ref.url,
                    f"{service} dropped {label} from {namespace.name}'s record {failed} and has not called it since: "
                    "the key is usable again, but the namespace no longer uses it and has lost that redundancy; list "
                    f"it again: {commands.add_versionless}",
                    version=ref.version,
                    at=seen.last_failure,
                )
            )
        elif seen.failing and seen.last_failure is not None:
            failing = f"{service}'s own calls on {label} fail (HTTP {seen.last_status} {_when(seen.last_failure, now)})"
            if assessment.usable and seen.failed_polls >= CONFIRMING_POLLS:
                # Nothing the monitor reads explains it, poll after poll: the most urgent thing to look at.
                severity = Severity.CRITICAL
                message = (
                    f"{failing}, {seen.failed_polls} polls in a row, while the monitor reads the key as usable: "
                    f"unless it was fixed since the last of them (the service's next poll{at_next} shows), "
                    "something the monitor cannot see is in the way (a vault firewall without the trusted-services "
                    "bypass, a deny assignment, a conditional access policy); look up the call in the vault's audit "
                    f"log (AZKVAuditLogs) for {namespace.name}'s identity"
                )
            elif assessment.usable:
                # One failed poll: the key may have changed since (recovered, enabled, access granted), which the
                # next poll shows; a second failure escalates. Until then no page should say "hidden block".
                severity = Severity.WARNING
                state = (
                    "another key serves the namespace" if served else "no listed key serves the namespace until then"
                )
                message = (
                    f"{failing} though the monitor reads the key as usable now: if it changed since (recovered, "
                    f"enabled, access granted), the service's next poll{at_next} finds it; {state}. A second "
                    "failing poll means something the monitor cannot see is in the way"
                )
            else:
                # Explained by the monitor's own finding; urgent when no other key serves the namespace.
                severity = Severity.WARNING if served else Severity.CRITICAL
                causes = ", ".join(reason.value for reason in assessment.reasons) or "unknown"
                serving = "another key serves the namespace" if served else "no listed key serves the namespace now"
                message = f"{failing}, as the monitor's reading explains ({causes}): {serving}"
            findings.append(
                Finding(
                    Code.SERVICE_ACCESS_FAILING, severity, ref.url, message, version=ref.version, at=seen.last_failure
                )
            )
    return findings


def worst_severity(findings: list[Finding]) -> Severity | None:
    """The most urgent severity among findings, or None when there are none."""
    return max((f.severity for f in findings), default=None)
