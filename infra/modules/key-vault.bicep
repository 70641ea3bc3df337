// The Key Vault holding the app registration's client certificate (CREDENTIAL_SOURCE=key_vault). RBAC
// authorization only (no access policies); soft delete and purge protection on, so a deleted certificate can be
// recovered and nobody can destroy it for good before the retention period ends.

@description('Required. Name of the vault: 3-24 letters, digits and dashes, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Optional. Azure region of the vault. Defaults to the resource group location.')
param location string = resourceGroup().location

@description('Optional. Tags applied to the vault.')
param tags object = {}

@description('Optional. Days a deleted vault or object stays recoverable (purge protection keeps it that long).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Optional. Principal (object) id of the app identity, granted Key Vault Secrets User on the vault to read the certificate through its backing secret. Empty: no assignment.')
param secretsUserPrincipalId string = ''

@description('Optional. Principal (object) id of the operator who creates or imports the certificate, granted Key Vault Certificates Officer on the vault. Empty: no assignment.')
param certificatesOfficerPrincipalId string = ''

@description('Optional. The webhooks\' function key, stored as the secret webhook-function-key. Empty: not written.')
@secure()
param webhookFunctionKey string = ''

@description('Optional. Log Analytics workspace receiving the vault audit log. Empty: no diagnostic setting.')
param workspaceResourceId string = ''

var roleIds = {
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  keyVaultCertificatesOfficer: 'a4417e6f-fecd-4de8-b567-7b0420556985'
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: a Flex Consumption app without virtual network integration reaches the vault over its public endpoint; access is by Entra identity and RBAC only
  // checkov:skip=CKV_AZURE_189: the app (no virtual network integration on Flex Consumption here) needs the public endpoint; every request needs an Entra token with a Key Vault data role (RBAC)
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

// Key Vault Secrets User: read secret contents, which includes the private key of a certificate through its
// backing secret (the app reads the certificate that way). Scoped to the vault because the certificate does not
// exist yet when this is provisioned; the vault holds nothing else.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(secretsUserPrincipalId)) {
  name: guid(vault.id, secretsUserPrincipalId, roleIds.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultSecretsUser)
    principalId: secretsUserPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault Certificates Officer: create, import and rotate certificates; it cannot read their private keys.
resource certificatesOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(certificatesOfficerPrincipalId)) {
  name: guid(vault.id, certificatesOfficerPrincipalId, roleIds.keyVaultCertificatesOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleIds.keyVaultCertificatesOfficer)
    principalId: certificatesOfficerPrincipalId
  }
}

// The function key every customer org's webhook service endpoint sends in x-functions-key; the app reads it through
// the Key Vault reference of its setting WEBHOOK_FUNCTION_KEY (app-service-key-vault-references) to register those
// endpoints. Written through Resource Manager (Microsoft.KeyVault/vaults/secrets, "Manage secrets by using
// Bicep"), a management-plane write the deployer's Contributor or Owner role allows, so nobody needs a data-plane
// role that would also read the certificate's private key.
resource webhookKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookFunctionKey)) {
  // checkov:skip=CKV_AZURE_41: a function key has no expiry; it is rotated by the runbook (infra/README.md, Deploy step 7)
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov reads no properties of a conditional resource (the same resource without `if` passes)
  parent: vault
  name: 'webhook-function-key'
  properties: {
    value: webhookFunctionKey
    contentType: 'text/plain'
  }
}

resource auditLog 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(workspaceResourceId)) {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: workspaceResourceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output resourceId string = vault.id
output uri string = vault.properties.vaultUri
