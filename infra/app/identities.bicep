// The two user-assigned identities: the monitor's own, and Event Grid's for writing dead letters. Separate so
// that each holds only what it needs.
param location string
param tags object
param resourceToken string

resource app 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-keyhealth-${resourceToken}'
  location: location
  tags: tags
}

resource eventGrid 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-keyhealth-eventgrid-${resourceToken}'
  location: location
  tags: tags
}

output appIdentityId string = app.id
output appPrincipalId string = app.properties.principalId
output appClientId string = app.properties.clientId
output eventGridIdentityId string = eventGrid.id
output eventGridPrincipalId string = eventGrid.properties.principalId
