// Key Vault events of one vault to the monitor: an Event Grid system topic on the vault and, once the function is
// deployed (subscribe), a subscription to its Event Grid trigger. Deployed into the vault's resource group.
// A vault has at most one system topic: if it already has one, see infra/README.md.
param vaultName string
param tags object
param functionAppId string

@description('Create the subscription: the function must be deployed already, or Event Grid refuses it.')
param subscribe bool
param deadLetterIdentityId string
param deadLetterAccountId string
param deadLetterContainerName string

@description('An https URL of `keyhealth serve` to deliver the same events to as a webhook; empty: none.')
param serveWebhookUrl string = ''

@description('Tenant of the app registration serve\'s tokens are for (KEYHEALTH_AUTH_TENANT_ID).')
param serveAuthTenantId string = ''

@description('Application id or URI of that app registration: the tokens\' audience (KEYHEALTH_AUTH_AUDIENCE).')
param serveAuthAudience string = ''

// Only with Entra ID delivery: Event Grid then sends a bearer token for the audience with every delivery (and
// with the validation handshake), so serve can refuse anyone else. Without an audience, no webhook is created.
var toServeWanted = startsWith(serveWebhookUrl, 'https://') && !empty(serveAuthTenantId) && !empty(serveAuthAudience)

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'keyhealth-${vaultName}'
  location: vault.location
  tags: tags
  // The identity Event Grid writes dead letters with.
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${deadLetterIdentityId}': {}
    }
  }
  properties: {
    source: vault.id
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

resource toMonitor 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (subscribe) {
  parent: topic
  name: 'keyhealth-monitor'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/keyvault_events'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    // Exactly the events monitor/formats/events.py acts on; delete, disable, purge and RBAC changes send none (the poll
    // finds those).
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.KeyNearExpiry'
        'Microsoft.KeyVault.KeyExpired'
        'Microsoft.KeyVault.KeyNewVersionCreated'
        'Microsoft.KeyVault.VaultAccessPolicyChanged'
      ]
    }
    // The handler re-reads live state, so a late delivery is still useful: retry for the full day Event Grid
    // allows, then keep the event in the dead-letter container for inspection.
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: deadLetterIdentityId
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

resource toServe 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = if (toServeWanted) {
  parent: topic
  name: 'keyhealth-serve'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: serveWebhookUrl
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
        azureActiveDirectoryTenantId: serveAuthTenantId
        azureActiveDirectoryApplicationIdOrUri: serveAuthAudience
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.KeyNearExpiry'
        'Microsoft.KeyVault.KeyExpired'
        'Microsoft.KeyVault.KeyNewVersionCreated'
        'Microsoft.KeyVault.VaultAccessPolicyChanged'
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: deadLetterIdentityId
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}
