// Unpin (remediation): a custom role holding only read and write on Service Bus namespaces, assignable in this
// resource group and assigned on each allow-listed namespace in it. Deployed into the namespaces' resource group.
param namespaceIds array
param principalId string
param environmentName string

var namespacesHere = filter(namespaceIds, id => startsWith(toLower(id), '${toLower(resourceGroup().id)}/'))

resource unpinRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'keyhealth-unpin', environmentName)
  properties: {
    // Role names are unique in the tenant: one per resource group and environment.
    roleName: 'keyhealth unpin (${environmentName}, ${resourceGroup().name})'
    description: 'Rewrite a Service Bus namespace\'s customer-managed key references: keyhealth remediation unpins a key version.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: [
          'Microsoft.ServiceBus/namespaces/read'
          'Microsoft.ServiceBus/namespaces/write'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

resource namespaces 'Microsoft.ServiceBus/namespaces@2021-11-01' existing = [
  for id in namespacesHere: {
    name: last(split(id, '/'))
  }
]

resource unpinAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (id, index) in namespacesHere: {
    name: guid(namespaces[index].id, principalId, unpinRole.name)
    scope: namespaces[index]
    properties: {
      // Role definitions live at the tenant; assignments name them by their subscription-level id.
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', unpinRole.name)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]
