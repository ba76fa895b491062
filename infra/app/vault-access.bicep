// The monitor's access to one Key Vault holding Service Bus keys, deployed into the vault's resource group.
// RBAC vaults: Key Vault Reader, plus Key Vault Crypto Officer only when remediation may write to this vault.
// Access-policy vaults (accessPolicy): a keys policy with the same reach instead, as RBAC roles do not apply there.
param vaultName string
param principalId string

@description('Remediation is on and may rotate or recover keys in this vault.')
param remediate bool

@description('The vault uses access policies rather than Azure RBAC.')
param accessPolicy bool

// Key Vault Reader: vault metadata and key attributes, versions and rotation policy; never key material.
var keyVaultReaderRoleId = '21090545-7ca7-4776-b22c-e363652d74d2'
// Key Vault Crypto Officer: rotate, create a version, recover a deleted key (remediation only).
var keyVaultCryptoOfficerRoleId = '14b46e9e-c2b7-41b4-b07b-48a6ebf60603'

// The access-policy equivalents of the two roles, as far as keyhealth uses them.
var readKeys = [
  'get'
  'list'
]
var remediateKeys = [
  'get'
  'list'
  'create'
  'rotate'
  'recover'
  'getrotationpolicy'
]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource keyVaultReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultReaderRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultReaderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource keyVaultCryptoOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (remediate) {
  name: guid(vault.id, principalId, keyVaultCryptoOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCryptoOfficerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// 'add' merges this entry into the vault's policies and leaves the others alone.
resource keysPolicy 'Microsoft.KeyVault/vaults/accessPolicies@2023-07-01' = if (accessPolicy) {
  parent: vault
  name: 'add'
  properties: {
    accessPolicies: [
      {
        tenantId: tenant().tenantId
        objectId: principalId
        permissions: {
          keys: remediate ? remediateKeys : readKeys
        }
      }
    ]
  }
}
