// Reader for the monitor on one subscription where namespaces or vaults live.
targetScope = 'subscription'

param principalId string

// Reader: list Service Bus namespaces with their encryption settings, Key Vaults with their access policies, and
// the role assignments on the vaults; no write, no data-plane access.
var readerRoleId = 'acdd72a7-3385-48ef-bd42-f606fba81ae7'

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, readerRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', readerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
