// Stops the deployment before any resource exists when main.bicep has found a reason not to deploy (a cloud or a
// region without Flex Consumption, or a secretless setup across two tenants). main.bicep's resource group waits for
// this module; the module's one parameter allows only 'none', so any other value fails the deployment with ARM's
// parameter error, which quotes the rejected value (the reasons), and nothing is created. It declares no resource.
targetScope = 'subscription'

@description('Required. Why the deployment must not go ahead, in sentences naming the fix, or none.')
@allowed([
  'none'
])
param reasonNotToDeploy string

output reasonNotToDeploy string = reasonNotToDeploy
