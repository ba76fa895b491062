// keyhealth on Azure: the monitor as a Functions app (Flex Consumption) wired to every Key Vault that holds
// Service Bus keys. Subscription scope, because it creates its resource group and grants the monitor read
// access where the namespaces and vaults live, which may be other resource groups and subscriptions.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name: names the resource group and seeds every resource name.')
param environmentName string

@minLength(1)
@description('Region of the resource group and the app; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group to create; empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Comma-separated resource ids of the Key Vaults that hold Service Bus keys. Each gets an Event Grid system topic subscribed to the monitor, and the monitor gets Key Vault Reader on it.')
param monitoredVaultIds string = ''

@description('Comma-separated ids of the subscriptions whose namespaces are monitored (the monitor gets Reader on each); empty: this subscription. The vaults\' subscriptions are always added.')
param monitoredSubscriptionIds string = ''

@description('Comma-separated resource ids of monitored vaults that use access policies rather than Azure RBAC: the monitor gets a keys get/list policy there (and create, rotate, recover, getrotationpolicy when remediation may act on the vault).')
param accessPolicyVaultIds string = ''

@allowed([
  'off'
  'dry-run'
  'on'
])
@description('KEYHEALTH_REMEDIATION. Write access (Key Vault Crypto Officer, the unpin role) is granted only when this is on.')
param remediationMode string = 'off'

@description('KEYHEALTH_REMEDIATION_ACTIONS: rotate, recover, unpin.')
param remediationActions string = 'rotate,recover'

@description('Comma-separated resource ids of the vaults remediation may write to, when remediationMode is on: Key Vault Crypto Officer on each of their keys remediationKeys names (on the vault for a wildcard name) and a recover-only role on the vault.')
param remediationVaultIds string = ''

@description('KEYHEALTH_REMEDIATION_KEYS: comma-separated key URLs, https://<vault host>/keys/<name> (the name may use * and ?). Empty: remediation may touch no key, and no key write is granted.')
param remediationKeys string = ''

@description('Comma-separated resource ids of the namespaces remediation may unpin (the custom unpin role when remediationMode is on and remediationActions lists unpin).')
param remediationNamespaceIds string = ''

@allowed([
  'on'
  'off'
])
@description('KEYHEALTH_AUDIT_LOGS. on: each monitored vault gets a diagnostic setting sending its AuditEvent logs to the monitor\'s Log Analytics workspace, and the monitor Log Analytics Reader on that workspace, so it observes the service\'s own key calls; off: neither.')
param auditLogs string = 'on'

@description('KEYHEALTH_WARNING_DAYS.')
param warningDays string = '30'

@description('KEYHEALTH_CRITICAL_DAYS.')
param criticalDays string = '7'

@description('KEYHEALTH_ALERTS (sinks and routes, JSON) encoded in base64, which survives azd\'s substitution into main.parameters.json whatever quotes the JSON holds. Name sink secrets by app setting (url_setting, ...) and map those settings to Key Vault secrets with alertSecretSettings.')
param alertsConfigBase64 string = ''

@description('Resource id of the Key Vault (Azure RBAC) holding the app\'s secrets; empty: no secrets.')
param secretsVaultId string = ''

@description('Secret in secretsVaultId for KEYHEALTH_WEBHOOK_SECRET (read only by `keyhealth serve`; the Functions routes use function keys); empty: none.')
param webhookSecretName string = ''

@description('App settings that KEYHEALTH_ALERTS names for sink secrets, as SETTING=secret-name pairs, comma-separated: each becomes a Key Vault reference into secretsVaultId.')
param alertSecretSettings string = ''

@description('OTEL_EXPORTER_OTLP_ENDPOINT: an OpenTelemetry Collector for metrics and spans; empty: no OTLP export.')
param otlpEndpoint string = ''

@description('Resource id of the action group the metric alerts notify; empty: the rules fire without notifying anyone.')
param alertActionGroupId string = ''

@minValue(1)
@maxValue(365)
@description('Alert when a namespace is predicted to go Revoked within this many days.')
param revocationAlertDays int = 7

@description('Also deliver the vaults\' events to `keyhealth serve` at this https URL (its Event Grid webhook route), with Microsoft Entra ID delivery; empty: no such subscription. Needs serveAuthAudience.')
param serveWebhookUrl string = ''

@description('KEYHEALTH_AUTH_TENANT_ID of that serve: the tenant of its app registration; empty: this deployment\'s tenant.')
param serveAuthTenantId string = ''

@description('KEYHEALTH_AUTH_AUDIENCE of that serve: the application id or application ID URI of its app registration, which Event Grid gets tokens for.')
param serveAuthAudience string = ''

@description('Create the Event Grid subscriptions. Event Grid refuses a subscription to a function that is not deployed yet, so the first provision runs without them and the postdeploy hook provisions again with this set.')
param wireEventGrid bool = false

// Lists are comma-separated text, which is what azd environment values hold. Resource ids are lower-cased so
// duplicates collapse (ARM ids are case-insensitive); setting and secret names keep their case.
func idList(text string) array => filter(map(split(text, ','), item => toLower(trim(item))), item => !empty(item))

func nameList(text string) array => filter(map(split(text, ','), item => trim(item)), item => !empty(item))

func subscriptionOf(resourceId string) string => split(resourceId, '/')[2]

func resourceGroupOf(resourceId string) string => split(resourceId, '/')[4]

func nameOf(resourceId string) string => last(split(resourceId, '/'))

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var vaultIds = union(idList(monitoredVaultIds), idList(remediationVaultIds))
var accessPolicyVaults = idList(accessPolicyVaultIds)
var remediationVaults = idList(remediationVaultIds)
var remediationNamespaces = idList(remediationNamespaceIds)
var remediationActionList = idList(remediationActions)
// Passed on as given: an empty list allows nothing, in the app and in the roles.
var remediationKeyPatterns = nameList(remediationKeys)
var unpinNamespaces = remediationMode == 'on' && contains(remediationActionList, 'unpin') ? remediationNamespaces : []
var givenSubscriptions = idList(monitoredSubscriptionIds)
var namespaceSubscriptions = empty(givenSubscriptions) ? array(toLower(subscription().subscriptionId)) : givenSubscriptions
// The monitor finds a vault by listing its subscription, so the vaults' subscriptions are read too.
var readerSubscriptions = union(
  namespaceSubscriptions,
  map(vaultIds, id => subscriptionOf(id)),
  map(remediationNamespaces, id => subscriptionOf(id))
)
var unpinResourceGroups = union(map(unpinNamespaces, id => join(take(split(id, '/'), 5), '/')), [])
var secretsVaultName = empty(secretsVaultId) ? '' : nameOf(secretsVaultId)
var alertSecretPairs = map(nameList(alertSecretSettings), pair => split(pair, '='))
var secretNames = union(
  empty(webhookSecretName) ? [] : array(webhookSecretName),
  map(alertSecretPairs, pair => trim(pair[1]))
)

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identities 'app/identities.bicep' = {
  name: 'identities'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appPrincipalId: identities.outputs.appPrincipalId
    auditReader: auditLogs == 'on'
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    appPrincipalId: identities.outputs.appPrincipalId
    eventGridPrincipalId: identities.outputs.eventGridPrincipalId
  }
}

// ARM evaluates a module's scope even when its condition is false, so without a secrets vault it points at the
// app's own group (and deploys nothing).
module secretAccess 'app/secret-access.bicep' = if (!empty(secretsVaultId) && !empty(secretNames)) {
  name: 'keyhealth-${resourceToken}-secrets'
  scope: resourceGroup(
    empty(secretsVaultId) ? subscription().subscriptionId : subscriptionOf(secretsVaultId),
    empty(secretsVaultId) ? rg.name : resourceGroupOf(secretsVaultId)
  )
  params: {
    vaultName: secretsVaultName
    secretNames: secretNames
    principalId: identities.outputs.appPrincipalId
  }
}

module functionApp 'app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    identityId: identities.outputs.appIdentityId
    identityClientId: identities.outputs.appClientId
    storageAccountName: storage.outputs.accountName
    deploymentContainerName: storage.outputs.deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    subscriptions: join(readerSubscriptions, ',')
    warningDays: warningDays
    criticalDays: criticalDays
    alertsConfig: empty(alertsConfigBase64) ? '' : base64ToString(alertsConfigBase64)
    secretsVaultName: secretsVaultName
    // Secrets come only from the secrets vault.
    webhookSecretName: empty(secretsVaultId) ? '' : webhookSecretName
    alertSecretSettings: empty(secretsVaultId) ? '' : alertSecretSettings
    otlpEndpoint: otlpEndpoint
    remediationMode: remediationMode
    remediationActions: join(remediationActionList, ',')
    remediationKeys: join(remediationKeyPatterns, ',')
    remediationNamespaces: join(map(remediationNamespaces, id => nameOf(id)), ',')
    auditLogs: auditLogs
  }
  // Key Vault references resolve only once the app's identity may read the secrets.
  dependsOn: [
    secretAccess
  ]
}

module subscriptionReader 'app/subscription-reader.bicep' = [
  for subscriptionId in readerSubscriptions: {
    name: take('keyhealth-${resourceToken}-reader-${subscriptionId}', 64)
    scope: subscription(subscriptionId)
    params: {
      principalId: identities.outputs.appPrincipalId
    }
  }
]

module vaultAccess 'app/vault-access.bicep' = [
  for (vaultId, index) in vaultIds: {
    name: take('keyhealth-${resourceToken}-access-${index}-${nameOf(vaultId)}', 64)
    scope: resourceGroup(subscriptionOf(vaultId), resourceGroupOf(vaultId))
    params: {
      vaultName: nameOf(vaultId)
      principalId: identities.outputs.appPrincipalId
      remediate: remediationMode == 'on' && contains(remediationVaults, vaultId)
      accessPolicy: contains(accessPolicyVaults, vaultId)
      keyPatterns: remediationKeyPatterns
      rotate: contains(remediationActionList, 'rotate')
      recover: contains(remediationActionList, 'recover')
      environmentName: environmentName
    }
  }
]

module vaultEvents 'app/vault-events.bicep' = [
  for (vaultId, index) in vaultIds: {
    name: take('keyhealth-${resourceToken}-events-${index}-${nameOf(vaultId)}', 64)
    scope: resourceGroup(subscriptionOf(vaultId), resourceGroupOf(vaultId))
    params: {
      vaultName: nameOf(vaultId)
      tags: tags
      functionAppId: functionApp.outputs.id
      subscribe: wireEventGrid
      deadLetterIdentityId: identities.outputs.eventGridIdentityId
      deadLetterAccountId: storage.outputs.accountId
      deadLetterContainerName: storage.outputs.deadLetterContainerName
      serveWebhookUrl: trim(serveWebhookUrl)
      serveAuthTenantId: empty(serveAuthTenantId) ? tenant().tenantId : trim(serveAuthTenantId)
      serveAuthAudience: trim(serveAuthAudience)
    }
  }
]

module vaultAudit 'app/vault-audit.bicep' = [
  for (vaultId, index) in (auditLogs == 'on' ? vaultIds : []): {
    name: take('keyhealth-${resourceToken}-audit-${index}-${nameOf(vaultId)}', 64)
    scope: resourceGroup(subscriptionOf(vaultId), resourceGroupOf(vaultId))
    params: {
      vaultName: nameOf(vaultId)
      workspaceId: monitoring.outputs.logAnalyticsId
    }
  }
]

module unpinRole 'app/unpin-role.bicep' = [
  for (groupId, index) in unpinResourceGroups: {
    name: take('keyhealth-${resourceToken}-unpin-${index}-${split(groupId, '/')[4]}', 64)
    scope: resourceGroup(split(groupId, '/')[2], split(groupId, '/')[4])
    params: {
      namespaceIds: unpinNamespaces
      principalId: identities.outputs.appPrincipalId
      environmentName: environmentName
    }
  }
]

module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    tags: tags
    appInsightsName: monitoring.outputs.appInsightsName
    actionGroupId: alertActionGroupId
    revocationAlertDays: revocationAlertDays
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output MONITOR_PRINCIPAL_ID string = identities.outputs.appPrincipalId
output MONITOR_CLIENT_ID string = identities.outputs.appClientId
output EVENT_GRID_DEAD_LETTER_CONTAINER string = '${storage.outputs.accountName}/${storage.outputs.deadLetterContainerName}'
