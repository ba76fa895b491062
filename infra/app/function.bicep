// The Functions app on the Flex Consumption plan (Python 3.11), running as the monitor's user-assigned identity,
// with every setting keyhealth reads (monitor/entry/config.py) set here.
param location string
param tags object
param resourceToken string
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param appInsightsName string

@description('KEYHEALTH_SUBSCRIPTIONS: the subscriptions the monitor was given Reader on.')
param subscriptions string
param warningDays string
param criticalDays string
param alertsConfig string
param secretsVaultName string
param webhookSecretName string
@description('SETTING=secret-name pairs, comma-separated, each set as a Key Vault reference.')
param alertSecretSettings string
param otlpEndpoint string
param remediationMode string
param remediationActions string
param remediationKeys string
param remediationNamespaces string

@description('KEYHEALTH_AUDIT_LOGS: on or off.')
param auditLogs string

@description('Instances at most; one poll runs at a time whatever the count (a lease in the state store).')
param maximumInstanceCount int = 40

func keyVaultReference(vault string, secret string) string => '@Microsoft.KeyVault(VaultName=${vault};SecretName=${secret})'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-keyhealth-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-keyhealth-${resourceToken}'
  location: location
  // azd finds the app it deploys the `monitor` service to by this tag.
  tags: union(tags, {
    'azd-service-name': 'monitor'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references resolve with the app's identity (there is no system-assigned one).
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: 2048
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// What the Functions host and the Azure SDK read. Flex Consumption sets the runtime from functionAppConfig, so
// FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION must not be set.
var platformSettings = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // DefaultAzureCredential picks the user-assigned identity by this.
  AZURE_CLIENT_ID: identityClientId
  OTEL_EXPORTER_OTLP_ENDPOINT: otlpEndpoint
}

// Every setting of monitor/entry/config.py, with the value that suits Azure (tests/test_infra.py holds the list).
var keyhealthSettings = {
  KEYHEALTH_WARNING_DAYS: warningDays
  KEYHEALTH_CRITICAL_DAYS: criticalDays
  KEYHEALTH_SUBSCRIPTIONS: subscriptions
  KEYHEALTH_ARM_ENDPOINT: environment().resourceManager
  // Each vault is reached at its own URI.
  KEYHEALTH_KEYVAULT_ENDPOINT: ''
  // Azure's certificates chain to the system's trust store.
  KEYHEALTH_CA_BUNDLE: ''
  // Never a fixed token against Azure: the managed identity signs in.
  KEYHEALTH_STATIC_TOKEN: ''
  KEYHEALTH_HTTP_RETRIES: '3'
  KEYHEALTH_HTTP_TIMEOUT_SECONDS: '30'
  KEYHEALTH_POLL_SCHEDULE: '0 */5 * * * *'
  // Instances come and go and share nothing on disk: state lives in Table Storage.
  KEYHEALTH_STATE_STORE: 'tables'
  // Unused with the tables store; /tmp is the only writable place on the plan, should it ever be chosen.
  KEYHEALTH_SQLITE_PATH: '/tmp/keyhealth-state.sqlite'
  KEYHEALTH_TABLES_ENDPOINT: storage.properties.primaryEndpoints.table
  // Identity-based: the account allows no shared keys, so there is no connection string.
  KEYHEALTH_TABLES_CONNECTION_STRING: ''
  KEYHEALTH_TABLE_PREFIX: 'keyhealth'
  KEYHEALTH_CONCURRENCY: '32'
  // Half of each vault's published request limit: the vault's other users (Service Bus among them) keep the rest.
  KEYHEALTH_KEYVAULT_SHARE: '50'
  // One Resource Graph query finds every namespace; Reader on the subscriptions is all it needs.
  KEYHEALTH_INVENTORY: 'resource-graph'
  // Geo-DR pairings change seldom: each is read every 6 hours (the partner's access every poll).
  KEYHEALTH_GEO_DR_REFRESH_MINUTES: '360'
  KEYHEALTH_AUDIT_LOGS: auditLogs
  // Found from each vault's diagnostic settings (Reader covers them), which also says which vaults send none.
  KEYHEALTH_AUDIT_WORKSPACES: ''
  // The cloud's Log Analytics query API.
  KEYHEALTH_LOGS_ENDPOINT: environment().name == 'AzureChinaCloud'
    ? 'https://api.loganalytics.azure.cn'
    : environment().name == 'AzureUSGovernment' ? 'https://api.loganalytics.us' : 'https://api.loganalytics.io'
  KEYHEALTH_AUDIT_LOOKBACK_MINUTES: '16'
  KEYHEALTH_LOG_LEVEL: 'info'
  // Read only by `keyhealth serve`; the Functions HTTP routes are guarded by function keys.
  KEYHEALTH_WEBHOOK_SECRET: empty(webhookSecretName) ? '' : keyVaultReference(secretsVaultName, webhookSecretName)
  // Entra ID bearer tokens: also read only by `keyhealth serve` (the Functions trigger takes Event Grid's system key).
  KEYHEALTH_AUTH_TENANT_ID: ''
  KEYHEALTH_AUTH_AUDIENCE: ''
  KEYHEALTH_AUTH_AUTHORITY: 'https://login.microsoftonline.com'
  KEYHEALTH_AUTH_ALLOWED_CALLERS: ''
  KEYHEALTH_ALERTS: alertsConfig
  KEYHEALTH_ALERT_RENOTIFY_HOURS: '4'
  KEYHEALTH_ALERT_RETRY_SECONDS: '30'
  KEYHEALTH_ALERT_GIVE_UP_HOURS: '24'
  KEYHEALTH_EVENT_COALESCE_SECONDS: '10'
  // The Watchdog (a dead-man's switch through the sinks) is off until a sink is named.
  KEYHEALTH_WATCHDOG_SINKS: ''
  KEYHEALTH_WATCHDOG_MINUTES: '60'
  KEYHEALTH_DELIVERY_SCHEDULE: '*/15 * * * * *'
  KEYHEALTH_PORTAL_URL: environment().portal
  KEYHEALTH_REMEDIATION: remediationMode
  KEYHEALTH_REMEDIATION_ACTIONS: remediationActions
  KEYHEALTH_REMEDIATION_KEYS: remediationKeys
  KEYHEALTH_REMEDIATION_NAMESPACES: remediationNamespaces
  KEYHEALTH_REMEDIATION_ROTATE_DAYS: '7'
  KEYHEALTH_REMEDIATION_KEY_LIFETIME_DAYS: '365'
  KEYHEALTH_REMEDIATION_MAX_PER_HOUR: '10'
}

// The sink secrets KEYHEALTH_ALERTS names by app setting (url_setting, secret_setting, ...), from Key Vault.
var alertSecretPairs = map(
  filter(map(split(alertSecretSettings, ','), pair => trim(pair)), pair => !empty(pair)),
  pair => split(pair, '=')
)
var alertSecretReferences = toObject(
  alertSecretPairs,
  pair => trim(pair[0]),
  pair => keyVaultReference(secretsVaultName, trim(pair[1]))
)

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: union(platformSettings, keyhealthSettings, alertSecretReferences)
}

output id string = site.id
output name string = site.name
