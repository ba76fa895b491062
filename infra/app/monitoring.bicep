// Log Analytics and Application Insights. Local (key) authentication is off: the app sends telemetry with its
// managed identity, which needs Monitoring Metrics Publisher on the component.
param location string
param tags object
param resourceToken string
param appPrincipalId string

@description('The monitor reads the vaults\' audit logs from the workspace (KEYHEALTH_AUDIT_LOGS=on).')
param auditReader bool

// Monitoring Metrics Publisher: send telemetry to Application Insights with Entra ID authentication.
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'
// Log Analytics Reader: query the workspace the monitored vaults send their audit logs to; nothing else.
var logAnalyticsReaderRoleId = '73c42c96-874c-492b-b04d-ab87d138a893'

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-keyhealth-${resourceToken}'
  location: location
  tags: tags
  properties: {
    retentionInDays: 30
    sku: {
      name: 'PerGB2018'
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-keyhealth-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
    // The metric alerts split by namespace and outcome, which custom metrics carry only with this on.
    #disable-next-line BCP037
    CustomMetricsOptedInType: 'WithDimensions'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, appPrincipalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource auditLogsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (auditReader) {
  name: guid(logAnalytics.id, appPrincipalId, logAnalyticsReaderRoleId)
  scope: logAnalytics
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', logAnalyticsReaderRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output appInsightsName string = appInsights.name
output logAnalyticsId string = logAnalytics.id
