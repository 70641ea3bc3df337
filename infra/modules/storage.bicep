// The storage account: Functions host storage, the Flex Consumption deployment container, and the app's own
// queues, tables and blob containers, all created up front. Identity-based access only: shared keys are disabled,
// so no connection string for this account exists anywhere; the app's identity gets data-plane roles here.

@description('Required. Name of the storage account: 3-24 lower-case letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Optional. Azure region of the account. Defaults to the resource group location.')
param location string = resourceGroup().location

@description('Optional. Tags applied to the account.')
param tags object = {}

@description('Optional. Redundancy of the account. Geo-redundant by default: the tenant registry lives here. Use Standard_GZRS with a zone-redundant plan.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_GRS'

@description('Required. Blob container the Flex Consumption plan deploys the app package to.')
@minLength(3)
@maxLength(63)
param deploymentContainerName string

@description('Optional. Blob containers the app writes to.')
param containerNames array = []

@description('Optional. Queues the app and its triggers use.')
param queueNames array = []

@description('Optional. Tables the app uses.')
param tableNames array = []

@description('Optional. Days deleted blobs and containers can be restored.')
@minValue(1)
@maxValue(365)
param deleteRetentionInDays int = 7

@description('Optional. Principal (object) id of the app identity, granted Storage Blob Data Owner, Storage Queue Data Contributor and Storage Table Data Contributor on this account. Empty: no assignments.')
param dataPrincipalId string = ''

var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: a Flex Consumption app without virtual network integration reaches storage over its public endpoint; access is by Entra identity only (shared keys disabled)
  // checkov:skip=CKV_AZURE_59: the app (no virtual network integration on Flex Consumption here) needs the public endpoint; every request needs an Entra token with a storage data role, shared keys are disabled
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionInDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: deleteRetentionInDays
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for containerName in union([deploymentContainerName], containerNames): {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for tableName in tableNames: {
  parent: tableService
  name: tableName
}]

// Storage Blob Data Owner: the Functions host keeps its leases and timer schedule state in blobs, and the Flex
// Consumption plan reads the app package from the deployment container with this identity.
resource blobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(dataPrincipalId)) {
  name: guid(account.id, dataPrincipalId, roleIds.storageBlobDataOwner)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageBlobDataOwner)
    principalId: dataPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Queue Data Contributor: the queue triggers and the app's own enqueue, poison and replay.
resource queueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(dataPrincipalId)) {
  name: guid(account.id, dataPrincipalId, roleIds.storageQueueDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageQueueDataContributor)
    principalId: dataPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Storage Table Data Contributor: the tenant registry, consent states, org index, webhook events, sync state.
resource tableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(dataPrincipalId)) {
  name: guid(account.id, dataPrincipalId, roleIds.storageTableDataContributor)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.storageTableDataContributor)
    principalId: dataPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = account.name
output resourceId string = account.id

// Service endpoints for identity-based connections. They carry the cloud's own suffix, unlike a connection
// built from the account name alone.
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
