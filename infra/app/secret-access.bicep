// Key Vault Secrets User for the app, on each secret its settings reference (not on the whole vault).
// Deployed into the secrets vault's resource group; the vault uses Azure RBAC and the secrets must exist.
param vaultName string
param secretNames array
param principalId string

// Key Vault Secrets User: read a secret's value, which a Key Vault reference needs.
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secrets 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = [
  for secretName in secretNames: {
    parent: vault
    name: secretName
  }
]

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (secretName, index) in secretNames: {
    name: guid(secrets[index].id, principalId, keyVaultSecretsUserRoleId)
    scope: secrets[index]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]
