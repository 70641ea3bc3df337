// The one user-assigned managed identity the app uses for everything: host storage, the app's own tables, queues
// and blobs, Key Vault, Application Insights and, in the secretless mode, as the federated credential of the app
// registration (only a user-assigned identity can be one).

@description('Required. Name of the user-assigned managed identity.')
@minLength(3)
@maxLength(128)
param name string

@description('Optional. Azure region of the identity. Defaults to the resource group location.')
param location string = resourceGroup().location

@description('Optional. Tags applied to the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output name string = identity.name
output resourceId string = identity.id

// The client id goes into app settings (the SDKs pick the identity by it); the principal id is what role
// assignments and the federated identity credential's subject name.
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
