// The monitor's access to one Key Vault holding Service Bus keys, deployed into the vault's resource group.
// RBAC vaults: Key Vault Reader on the vault; when remediation may write here, Key Vault Crypto Officer on each
// allow-listed key (a key scope), and a recover-only custom role on the vault (a deleted key has no key scope).
// Access-policy vaults (accessPolicy): a keys policy instead, which is vault-wide, as RBAC roles do not apply there.
param vaultName string
param principalId string
param environmentName string

@description('Remediation is on and may write to this vault (it is in remediationVaultIds).')
param remediate bool

@description('The vault uses access policies rather than Azure RBAC.')
param accessPolicy bool

@description('KEYHEALTH_REMEDIATION_KEYS as a list of key URLs; those on this vault\'s host say which keys may be written.')
param keyPatterns array

@description('KEYHEALTH_REMEDIATION_ACTIONS lists rotate.')
param rotate bool

@description('KEYHEALTH_REMEDIATION_ACTIONS lists recover.')
param recover bool

// Key Vault Reader: vault metadata and key attributes, versions and rotation policy; never key material.
var keyVaultReaderRoleId = '21090545-7ca7-4776-b22c-e363652d74d2'
// Key Vault Crypto Officer: rotate and create a version of a key, read its rotation policy (remediation only).
var keyVaultCryptoOfficerRoleId = '14b46e9e-c2b7-41b4-b07b-48a6ebf60603'

// The patterns on this vault's own host in this cloud (https://<vault><keyvaultDns>/keys/<name>), as key names.
var keyPrefix = 'https://${toLower(vaultName)}${environment().suffixes.keyvaultDns}/keys/'
var keyNames = map(filter(keyPatterns, p => startsWith(toLower(p), keyPrefix)), p => substring(toLower(p), length(keyPrefix)))
// A role can be scoped to one key, not to a pattern: a wildcard name gets the role on the vault instead.
var literalKeyNames = filter(keyNames, name => !contains(name, '*') && !contains(name, '?'))
var wildcardKeyNames = filter(keyNames, name => contains(name, '*') || contains(name, '?'))
var writes = remediate && !empty(keyNames)
var rotateKeys = writes && rotate && !accessPolicy ? literalKeyNames : []
var rotateOnVault = writes && rotate && !accessPolicy && !empty(wildcardKeyNames)
var recoverOnVault = writes && recover && !accessPolicy

// The access-policy equivalents, as far as keyhealth uses them: read always; rotate and recover only as chosen.
var readKeys = [
  'get'
  'list'
]
var rotatePermissions = writes && rotate ? [
  'create'
  'rotate'
  'getrotationpolicy'
] : []
var recoverPermissions = writes && recover ? [
  'recover'
] : []

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

// The keys must exist when provisioning: a role assignment needs its scope.
resource allowedKeys 'Microsoft.KeyVault/vaults/keys@2023-07-01' existing = [
  for name in rotateKeys: {
    parent: vault
    name: name
  }
]

resource keyCryptoOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (name, index) in rotateKeys: if (remediate) {
    name: guid(allowedKeys[index].id, principalId, keyVaultCryptoOfficerRoleId)
    scope: allowedKeys[index]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCryptoOfficerRoleId)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource vaultCryptoOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (remediate && rotateOnVault) {
  name: guid(vault.id, principalId, keyVaultCryptoOfficerRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCryptoOfficerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Recovering a soft-deleted key: the key's own scope is gone while it is deleted, so a key-scoped role cannot be
// relied on. This role holds the one data action recover needs, no delete or purge; keyhealth's allow-list picks
// the keys.
resource recoverRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (remediate && recoverOnVault) {
  name: guid(resourceGroup().id, 'keyhealth-recover', environmentName, toLower(vaultName))
  properties: {
    // Role names are unique in the tenant: one per vault and environment.
    roleName: 'keyhealth recover keys (${environmentName}, ${vaultName})'
    description: 'Recover soft-deleted keys of one vault: keyhealth remediation restores a deleted Service Bus key.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.KeyVault/vaults/keys/recover/action'
        ]
        notDataActions: []
      }
    ]
  }
}

resource recoverAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (remediate && recoverOnVault) {
  name: guid(vault.id, principalId, recoverRole.name)
  scope: vault
  properties: {
    // Role definitions live at the tenant; assignments name them by their subscription-level id.
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', recoverRole.name)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// 'add' merges this entry into the vault's policies and leaves the others alone. Access policies are vault-wide:
// keyhealth's allow-list is then the only thing narrowing writes to the listed keys.
resource keysPolicy 'Microsoft.KeyVault/vaults/accessPolicies@2023-07-01' = if (accessPolicy) {
  parent: vault
  name: 'add'
  properties: {
    accessPolicies: [
      {
        tenantId: tenant().tenantId
        objectId: principalId
        permissions: {
          keys: concat(readKeys, rotatePermissions, recoverPermissions)
        }
      }
    ]
  }
}
