// One monitored vault's audit logs to the monitor's workspace: the calls Service Bus makes on its keys (get, wrap,
// unwrap, by the namespace's identity) are what keyhealth observes (KEYHEALTH_AUDIT_LOGS=on). The resource-specific
// table (AZKVAuditLogs) is the one keyhealth queries first; a vault that already sends its AuditEvent logs to a
// workspace keeps that setting, and a vault holds at most five.
param vaultName string
param workspaceId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource audit 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'keyhealth-audit'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}
