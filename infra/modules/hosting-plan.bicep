// The Flex Consumption plan (FC1, Linux). Scale limits and instance memory live on the function app
// (functionAppConfig.scaleAndConcurrency), not here.

@description('Required. Name of the plan.')
@minLength(1)
@maxLength(60)
param name string

@description('Optional. Azure region of the plan; it must offer Flex Consumption. Defaults to the resource group location.')
param location string = resourceGroup().location

@description('Optional. Tags applied to the plan.')
param tags object = {}

@description('Optional. Spread instances across availability zones (only in regions where Flex Consumption supports it).')
param zoneRedundant bool = false

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: opt-in through zoneRedundant: on Flex Consumption it keeps at least two billed always-ready instances per function group and is not offered in every region
  name: name
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

output name string = plan.name
output resourceId string = plan.id
