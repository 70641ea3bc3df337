// Log Analytics workspace and the workspace-based Application Insights component. Local (key) authentication is
// off on both: telemetry is accepted only with an Entra token, which the app gets with its managed identity
// (APPLICATIONINSIGHTS_AUTHENTICATION_STRING), so the connection string alone cannot be used to send data.

@description('Required. Name of the Application Insights component.')
@minLength(1)
@maxLength(260)
param name string

@description('Required. Name of the Log Analytics workspace.')
@minLength(4)
@maxLength(63)
param workspaceName string

@description('Optional. Azure region of both resources. Defaults to the resource group location.')
param location string = resourceGroup().location

@description('Optional. Tags applied to both resources.')
param tags object = {}

@description('Optional. Days the workspace keeps data.')
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

@description('Optional. Principal (object) id granted Monitoring Metrics Publisher on the component, so it can send telemetry with an Entra token. Empty: no assignment.')
param metricsPublisherPrincipalId string = ''

var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: name
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    IngestionMode: 'LogAnalytics'
    DisableLocalAuth: true
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

// Monitoring Metrics Publisher: the one data-plane role that lets an Entra identity send telemetry once local
// authentication is disabled. Scoped to this component only.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(metricsPublisherPrincipalId)) {
  name: guid(appInsights.id, metricsPublisherPrincipalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: metricsPublisherPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output name string = appInsights.name
output resourceId string = appInsights.id
output workspaceName string = workspace.name
output workspaceResourceId string = workspace.id
