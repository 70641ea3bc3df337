// Provisions the Dataverse S2S function app for `azd up`: a resource group holding one user-assigned identity,
// identity-only storage with every queue, table and container the app uses, a Key Vault (RBAC, purge protection),
// Log Analytics with Application Insights (local auth off), a Flex Consumption plan and the function app.
// Each module holds one resource family and grants the identity its own least-privilege roles.
// Parameters named after a setting (camelCase of the Settings field) default to the code's default; the
// settings contract test checks that.
targetScope = 'subscription'

@description('Required. Name of the azd environment; used in resource names and the azd-env-name tag.')
@minLength(1)
@maxLength(64)
param environmentName string

@description('Required. Azure region of every resource. It must offer the Flex Consumption plan: the deployment refuses a region that is neither in flexConsumptionRegions below nor in additionalFlexConsumptionRegions (az functionapp list-flexconsumption-locations lists the current ones).')
@minLength(1)
param location string

@description('Optional. Regions that az functionapp list-flexconsumption-locations lists but flexConsumptionRegions below does not have yet, as that command names them (lower case, no spaces). Empty: the built-in list only.')
param additionalFlexConsumptionRegions array = []

@description('Optional. Name of the resource group. Defaults to rg-<environmentName>.')
param resourceGroupName string = ''

@description('Optional. Principal (object) id of the person or pipeline running azd (AZURE_PRINCIPAL_ID), granted Key Vault Certificates Officer to create or import the client certificate. Empty: no assignment.')
param deployerPrincipalId string = ''

@description('Optional. CIDR ranges allowed to call the app; all other callers get 403. Empty: open to all (customer administrators onboard from their own browsers and Dataverse posts webhooks from its own addresses, so restrict only when those are covered).')
param allowedIpRanges array = []

// Flex Consumption: "The lowest maximum scale is currently 40. The highest currently supported value is 1000."
// (learn.microsoft.com/azure/azure-functions/flex-consumption-plan#considerations); Microsoft's Flex samples declare
// the same bounds (Azure-Samples/azure-functions-flex-consumption-samples, IaC/bicep/main.bicep).
@description('Optional. Most instances the Flex Consumption app scales out to (40-1000: Flex Consumption accepts no lower maximum).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Optional. Memory of each Flex Consumption instance in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Optional. Spread the plan across availability zones (regions that support it for Flex Consumption).')
param zoneRedundant bool = false

@description('Optional. Redundancy of the storage account (geo-redundant by default; Standard_GZRS with zoneRedundant).')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_GRS'

@description('Optional. Days Log Analytics keeps data.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Optional. Days a deleted vault or certificate stays recoverable; purge protection holds the vault name that long.')
@minValue(7)
@maxValue(90)
param keyVaultSoftDeleteRetentionInDays int = 90

@description('Required. ENTRA_CLIENT_ID: application (client) id of the app registration.')
@minLength(36)
@maxLength(36)
param entraClientId string

@description('Required. ENTRA_HOME_TENANT_ID: tenant id where the app is registered.')
@minLength(36)
@maxLength(36)
param entraHomeTenantId string

@description('Optional. APP_MODE: multi_tenant (any consenting tenant) or single_tenant (the home tenant only).')
@allowed([
  'multi_tenant'
  'single_tenant'
])
param appMode string = 'multi_tenant'

@description('Optional. CREDENTIAL_SOURCE: key_vault (certificate in the vault) or managed_identity_federation (secretless: the identity is a federated credential of the app registration). certificate_file is for local work only.')
@allowed([
  'key_vault'
  'managed_identity_federation'
])
param credentialSource string = 'key_vault'

@description('Optional. KEY_VAULT_CERTIFICATE_NAME: name of the client certificate in the vault.')
@minLength(1)
@maxLength(127)
param keyVaultCertificateName string = 's2s-client'

@description('Optional. ENTRA_AUTHORITY_HOST override. Empty: the preset of the cloud deployed to.')
param entraAuthorityHost string = ''

@description('Optional. DATAVERSE_DOMAIN_SUFFIXES override, comma-separated. Empty: the preset of the cloud deployed to.')
param dataverseDomainSuffixes string = ''

@description('Optional. FEDERATION_AUDIENCE override. Empty: the preset of the cloud deployed to.')
param federationAudience string = ''

@description('Optional. CERTIFICATE_REFRESH_SECONDS: how long a loaded certificate is used before the vault is read again.')
@minValue(1)
param certificateRefreshSeconds int = 1800

@description('Optional. SEND_CERTIFICATE_CHAIN: send x5c in the client assertion (subject name/issuer authentication).')
param sendCertificateChain bool = true

@description('Optional. TOKEN_CLIENT_CACHE_SIZE: most tenants whose token client a worker keeps.')
@minValue(1)
param tokenClientCacheSize int = 2000

@description('Optional. HTTP_TIMEOUT_SECONDS: timeout of calls to Entra ID.')
@minValue(1)
param httpTimeoutSeconds int = 30

@description('Optional. DATAVERSE_TIMEOUT_SECONDS: timeout of one Dataverse Web API request.')
@minValue(1)
param dataverseTimeoutSeconds int = 60

@description('Optional. DATAVERSE_MAX_ATTEMPTS: most attempts for one Dataverse call.')
@minValue(1)
param dataverseMaxAttempts int = 6

@description('Optional. DATAVERSE_RETRY_BUDGET_SECONDS: longest one Dataverse call may spend waiting and backing off.')
@minValue(1)
param dataverseRetryBudgetSeconds int = 300

@description('Optional. DATAVERSE_SHARED_THROTTLE: share each 429 Retry-After window with every instance through the orgthrottle table.')
param dataverseSharedThrottle bool = true

@description('Optional. DATAVERSE_THROTTLE_REFRESH_MS: how old the shared windows an instance acts on may be (0: read before every request).')
@minValue(0)
param dataverseThrottleRefreshMs int = 1000

@description('Optional. CONSENT_STATE_TTL_SECONDS: how long an onboarding attempt may take (60-600).')
@minValue(60)
@maxValue(600)
param consentStateTtlSeconds int = 600

@description('Optional. APP_DISPLAY_NAME: the name the onboarding pages show.')
@minLength(1)
param appDisplayName string = 'Dataverse S2S integration'

@description('Optional. VERIFICATION_RETRY_DELAYS: comma-separated seconds between re-checks of a fresh consent.')
param verificationRetryDelays string = '30,60,120,300'

@description('Optional. WEBHOOK_MAX_BODY_BYTES: largest webhook body accepted.')
@minValue(1024)
@maxValue(16777216)
param webhookMaxBodyBytes int = 524288

@description('Optional. WEBHOOK_SECRET_HEADER: header carrying a tenant webhook secret.')
param webhookSecretHeader string = 'x-s2s-webhook-secret'

@description('Optional. WEBHOOK_IMPERSONATE_INITIATING_USER: handlers call Dataverse as the user who made the change.')
param webhookImpersonateInitiatingUser bool = false

@description('Optional. WEBHOOK_SUBSCRIPTIONS: the tables and messages the app registers webhook steps for, table:Message,Message;table:Message.')
param webhookSubscriptions string = 'account:Create,Update,Delete;contact:Create,Update,Delete'

@description('Optional. SECURITY_ROLE_NAME: the name of the custom security role the app needs in each customer org.')
param securityRoleName string = 'Dataverse S2S integration'

@description('Optional. USER_API_ENABLED: serve the API of the signed-in users (me/*), which reads Dataverse impersonating the user.')
param userApiEnabled bool = true

@description('Optional. ONBOARDING_PROVISIONING: onboarding creates the security role, application user and webhook in the org with the signed-in administrator token (false: the administrator does it by hand).')
param onboardingProvisioning bool = true

@description('Optional. WEBHOOK_SECRET_REQUIRED: refuse deliveries without their org\'s own secret; false only while orgs registered by hand get theirs.')
param webhookSecretRequired bool = true

@description('Optional. WEBHOOK_MAX_DEQUEUE_COUNT: attempts before an event goes to the poison queue; also sets the host queue maxDequeueCount.')
@minValue(1)
@maxValue(100)
param webhookMaxDequeueCount int = 5

@description('Optional. WEBHOOK_SECRET_OVERLAP_SECONDS: how long an org\'s rotated-out webhook secret is still accepted.')
@minValue(0)
@maxValue(604800)
param webhookSecretOverlapSeconds int = 3600

@description('Optional. The function key webhooks send in x-functions-key (azd env WEBHOOK_FUNCTION_KEY, from the deployed app): stored as the vault secret webhook-function-key, which the app setting WEBHOOK_FUNCTION_KEY references. Empty: the secret is not written.')
@secure()
param webhookFunctionKey string = ''

@description('Optional. WEBHOOK_FILTERING_ATTRIBUTES: columns whose change fires a table\'s Update step, table:column,column;table:column; empty: every change.')
param webhookFilteringAttributes string = ''

@description('Optional. SYNC_SCHEDULE: NCRONTAB schedule of the incremental sync sweep.')
param syncSchedule string = '0 */15 * * * *'

@description('Optional. HEALTH_SCHEDULE: NCRONTAB schedule of the tenant health sweep.')
param healthSchedule string = '0 5 * * * *'

@description('Optional. CERTIFICATE_EXPIRY_SCHEDULE: NCRONTAB schedule of the certificate expiry check.')
param certificateExpirySchedule string = '0 0 6 * * *'

@description('Optional. HOUSEKEEPING_SCHEDULE: NCRONTAB schedule of the housekeeping job (expired onboarding states, webhook event records, old tenant history).')
param housekeepingSchedule string = '0 20 * * * *'

@description('Optional. WEBHOOK_EVENT_RETENTION_DAYS: days a webhook event record is kept after receipt; at least the 7-day dedupe window.')
@minValue(7)
@maxValue(365)
param webhookEventRetentionDays int = 14

@description('Optional. TENANT_HISTORY_RETENTION_DAYS: tenant history rows older than this are deleted, except the newest TENANT_HISTORY_KEEP of each tenant.')
@minValue(1)
@maxValue(3650)
param tenantHistoryRetentionDays int = 365

@description('Optional. TENANT_HISTORY_KEEP: newest history rows of each tenant that are always kept, whatever their age.')
@minValue(1)
@maxValue(10000)
param tenantHistoryKeep int = 50

@description('Optional. SWEEP_CONCURRENCY: tenants a sweep works on at once.')
@minValue(1)
@maxValue(64)
param sweepConcurrency int = 8

@description('Optional. SWEEP_TIME_BUDGET_SECONDS: a sweep stops starting work after this long (keep under functionTimeout).')
@minValue(10)
@maxValue(3600)
param sweepTimeBudgetSeconds int = 480

@description('Optional. SWEEP_LEASE_SECONDS: how long a sweep unit stays leased to its worker without a saved page; a dead worker\'s unit is taken over after this.')
@minValue(5)
@maxValue(3600)
param sweepLeaseSeconds int = 600

@description('Optional. SYNC_TABLES: tables and columns to sync, entityset:col,col;entityset:col.')
param syncTables string = 'accounts:accountid,name,accountnumber,telephone1,revenue,modifiedon;contacts:contactid,firstname,lastname,emailaddress1,modifiedon'

@description('Optional. SYNC_PAGE_SIZE: rows per change-tracking page.')
@minValue(1)
@maxValue(5000)
param syncPageSize int = 5000

@description('Optional. SYNC_CONTAINER: blob container the sync sink writes NDJSON to (created here).')
@minLength(3)
@maxLength(63)
param syncContainer string = 'sync'

@description('Optional. CERTIFICATE_EXPIRY_WARNING_DAYS: days before expiry at which the certificate check warns.')
param certificateExpiryWarningDays string = '30,14,7'

@description('Optional. OIDC_AUDIENCES: comma-separated aud values accepted on user tokens. Empty: the client id and api://<client id>.')
param oidcAudiences string = ''

@description('Optional. OIDC_REQUIRED_SCOPE: delegated scope a user token must carry. Empty: access_as_user, unless oidcRequiredRole is set.')
param oidcRequiredScope string = ''

@description('Optional. OIDC_REQUIRED_ROLE: app role accepted instead of the scope. Empty: none.')
param oidcRequiredRole string = ''

@description('Optional. OIDC_V1_ISSUER_TEMPLATE override, with {tenantid}. Empty: the preset of the cloud deployed to.')
param oidcV1IssuerTemplate string = ''

@description('Optional. OIDC_CLOCK_SKEW_SECONDS: tolerance on exp and nbf of user tokens (0-600).')
@minValue(0)
@maxValue(600)
param oidcClockSkewSeconds int = 120

@description('Optional. LIBRARY_LOG_LEVEL: level of the Azure SDK, MSAL and urllib3 loggers. Below WARNING, azure-core logs every request and response header block, each one an Application Insights record.')
@allowed([
  'DEBUG'
  'INFO'
  'WARNING'
  'ERROR'
  'CRITICAL'
])
param libraryLogLevel string = 'WARNING'

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}

// The app's Settings presets are named after clouds; map the cloud this deployment runs in onto them. Only 'public'
// gets past the deployment guard below (no Flex Consumption elsewhere); the mapping stays whole so that the
// settings contract test can hold it to the code's presets.
var azureCloud = environment().name == 'AzureUSGovernment' ? 'usgov' : environment().name == 'AzureChinaCloud' ? 'china' : 'public'
var federationAudiences = {
  public: 'api://AzureADTokenExchange'
  usgov: 'api://AzureADTokenExchangeUSGov'
  china: 'api://AzureADTokenExchangeChina'
}
var useFederation = credentialSource == 'managed_identity_federation'

// Reasons not to deploy, checked before anything is created: the resource group waits for modules/deployment-guard
// .bicep, whose only parameter allows the value 'none', so ARM rejects the deployment with the reasons below as the
// rejected value. (Bicep's fail() would say it more directly, but pycep, the parser checkov uses, cannot read it;
// tools/infra_check.py requires every file to parse.) tests/infra/test_deployment_guard.py evaluates these lines.
//
// 1. Cloud. This template deploys a Flex Consumption plan. Microsoft: "If you're using Azure Government, Flex
//    Consumption isn't available there yet." (learn.microsoft.com/azure/azure-functions/migration/
//    migrate-plan-consumption-to-flex). For Azure operated by 21Vianet no statement either way was found, so it is
//    refused too rather than claimed.
// 2. Region. Not every region offers Flex Consumption; Microsoft publishes no fixed list but the command
//    `az functionapp list-flexconsumption-locations` (learn.microsoft.com/azure/azure-functions/flex-consumption-how-to
//    #view-currently-supported-regions). The list below is the one Microsoft's Flex Consumption quickstart allows
//    for its location (Azure-Samples/functions-quickstart-python-http-azd, infra/main.bicep, 2025-11); a region added
//    since goes in additionalFlexConsumptionRegions.
// 3. Tenant. In the secretless mode the managed identity is a federated credential of the app registration, and
//    "Both the Microsoft Entra app and managed identity must belong to the same tenant." (learn.microsoft.com/entra/
//    workload-id/workload-identity-federation-config-app-trust-managed-identity). The identity is created in the
//    tenant of the subscription deployed to, tenant().
var flexConsumptionRegions = [
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'eastus2euap'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
]
var isPublicCloud = environment().name == 'AzureCloud'
var offersFlexConsumption = contains(union(flexConsumptionRegions, additionalFlexConsumptionRegions), toLower(replace(location, ' ', '')))
var federationTenantMismatch = useFederation && toLower(tenant().tenantId) != toLower(entraHomeTenantId)
var cloudRefusal = isPublicCloud ? '' : 'Cloud ${environment().name} is not supported: this template deploys a Flex Consumption plan, which Microsoft documents as not available in Azure Government and which this project has not confirmed in Azure operated by 21Vianet. Deploy to the Azure public cloud (AzureCloud); see infra/README.md, Supported clouds and regions.'
var regionRefusal = offersFlexConsumption ? '' : 'Region ${location} is not on this template\'s list of regions that offer Flex Consumption. Run `az functionapp list-flexconsumption-locations --output table` for the current list and choose one (azd env set AZURE_LOCATION <region>); if it lists ${location}, pass it in additionalFlexConsumptionRegions.'
var tenantRefusal = federationTenantMismatch ? 'CREDENTIAL_SOURCE=managed_identity_federation needs the managed identity and the app registration in the same Microsoft Entra tenant, but this subscription belongs to tenant ${tenant().tenantId} and ENTRA_HOME_TENANT_ID is ${entraHomeTenantId}. Deploy into a subscription of tenant ${entraHomeTenantId}, or use CREDENTIAL_SOURCE=key_vault.' : ''
var reasonNotToDeploy = empty('${cloudRefusal}${regionRefusal}${tenantRefusal}') ? 'none' : replace(trim('${cloudRefusal} ${regionRefusal} ${tenantRefusal}'), '  ', ' ')

// Names the app fixes in code (shared/*.py: *_QUEUE, *_TABLE, *CONTAINER); created up front so the first
// request does not pay for creating them.
var deploymentContainerName = 'app-package'
var queueNames = [
  'tenant-verification'
  'webhook-events'
  'webhook-events-poison'
]
var tableNames = [
  'tenants'
  'tenanthistory'
  'consentstates'
  'orgindex'
  'webhookevents'
  'processedchanges'
  'syncstate'
  'orgthrottle'
]
var containerNames = [
  'webhook-payloads'
  syncContainer
]

module deploymentGuard 'modules/deployment-guard.bicep' = {
  name: 'deployment-guard'
  params: {
    reasonNotToDeploy: reasonNotToDeploy
  }
}

// Everything else is scoped to this group, so nothing is created until the guard has passed.
resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
  dependsOn: [
    deploymentGuard
  ]
}

module identity 'modules/managed-identity.bicep' = {
  name: 'managed-identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    name: '${abbrs.insightsComponents}${resourceToken}'
    workspaceName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
    metricsPublisherPrincipalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    deploymentContainerName: deploymentContainerName
    containerNames: containerNames
    queueNames: queueNames
    tableNames: tableNames
    dataPrincipalId: identity.outputs.principalId
  }
}

module keyVault 'modules/key-vault.bicep' = {
  name: 'key-vault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    // The app reads the vault in both modes: the certificate (key_vault), and the webhook function key
    // (WEBHOOK_FUNCTION_KEY is a Key Vault reference, resolved with this identity).
    secretsUserPrincipalId: identity.outputs.principalId
    webhookFunctionKey: webhookFunctionKey
    certificatesOfficerPrincipalId: deployerPrincipalId
    workspaceResourceId: monitoring.outputs.workspaceResourceId
  }
}

module plan 'modules/hosting-plan.bicep' = {
  name: 'hosting-plan'
  scope: rg
  params: {
    name: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    zoneRedundant: zoneRedundant
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: '${abbrs.webSitesFunctions}${resourceToken}'
    location: location
    tags: union(tags, {
      'azd-service-name': 'api'
    })
    planResourceId: plan.outputs.resourceId
    identityResourceId: identity.outputs.resourceId
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageQueueEndpoint: storage.outputs.queueEndpoint
    storageTableEndpoint: storage.outputs.tableEndpoint
    storageSuffix: environment().suffixes.storage
    deploymentContainerName: deploymentContainerName
    appInsightsName: monitoring.outputs.name
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    allowedIpRanges: allowedIpRanges
    entraClientId: entraClientId
    entraHomeTenantId: entraHomeTenantId
    appMode: appMode
    azureCloud: azureCloud
    entraAuthorityHost: entraAuthorityHost
    dataverseDomainSuffixes: dataverseDomainSuffixes
    federationAudience: federationAudience
    credentialSource: credentialSource
    keyVaultUrl: keyVault.outputs.uri
    keyVaultCertificateName: keyVaultCertificateName
    certificateRefreshSeconds: certificateRefreshSeconds
    sendCertificateChain: sendCertificateChain
    tokenClientCacheSize: tokenClientCacheSize
    httpTimeoutSeconds: httpTimeoutSeconds
    dataverseTimeoutSeconds: dataverseTimeoutSeconds
    dataverseMaxAttempts: dataverseMaxAttempts
    dataverseRetryBudgetSeconds: dataverseRetryBudgetSeconds
    dataverseSharedThrottle: dataverseSharedThrottle
    dataverseThrottleRefreshMs: dataverseThrottleRefreshMs
    consentStateTtlSeconds: consentStateTtlSeconds
    appDisplayName: appDisplayName
    verificationRetryDelays: verificationRetryDelays
    webhookMaxBodyBytes: webhookMaxBodyBytes
    webhookSecretHeader: webhookSecretHeader
    webhookImpersonateInitiatingUser: webhookImpersonateInitiatingUser
    webhookSubscriptions: webhookSubscriptions
    securityRoleName: securityRoleName
    userApiEnabled: userApiEnabled
    onboardingProvisioning: onboardingProvisioning
    webhookSecretRequired: webhookSecretRequired
    webhookMaxDequeueCount: webhookMaxDequeueCount
    webhookSecretOverlapSeconds: webhookSecretOverlapSeconds
    webhookFilteringAttributes: webhookFilteringAttributes
    syncSchedule: syncSchedule
    healthSchedule: healthSchedule
    certificateExpirySchedule: certificateExpirySchedule
    housekeepingSchedule: housekeepingSchedule
    webhookEventRetentionDays: webhookEventRetentionDays
    tenantHistoryRetentionDays: tenantHistoryRetentionDays
    tenantHistoryKeep: tenantHistoryKeep
    sweepConcurrency: sweepConcurrency
    sweepTimeBudgetSeconds: sweepTimeBudgetSeconds
    sweepLeaseSeconds: sweepLeaseSeconds
    syncTables: syncTables
    syncPageSize: syncPageSize
    syncContainer: syncContainer
    certificateExpiryWarningDays: certificateExpiryWarningDays
    oidcAudiences: oidcAudiences
    oidcRequiredScope: oidcRequiredScope
    oidcRequiredRole: oidcRequiredRole
    oidcV1IssuerTemplate: oidcV1IssuerTemplate
    oidcClockSkewSeconds: oidcClockSkewSeconds
    libraryLogLevel: libraryLogLevel
  }
}

// azd stores these in the environment (.azure/<env>/.env); hooks and the README steps read them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_URI string = 'https://${functionApp.outputs.defaultHostName}'
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URL string = keyVault.outputs.uri
output AZURE_KEY_VAULT_CERTIFICATE_NAME string = keyVaultCertificateName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_MANAGED_IDENTITY_NAME string = identity.outputs.name
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_APPLICATION_INSIGHTS_NAME string = monitoring.outputs.name
output AZURE_CREDENTIAL_SOURCE string = credentialSource
// Register this exact value as a Web redirect URI on the app registration.
output AZURE_ONBOARDING_REDIRECT_URI string = functionApp.outputs.onboardingRedirectUri
// The federated identity credential the app registration needs in the secretless mode (empty otherwise):
// infra/scripts/add-federated-credential.sh, run by the azd postprovision hook, creates it from these.
output AZURE_FEDERATED_CREDENTIAL_ISSUER string = useFederation ? '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0' : ''
output AZURE_FEDERATED_CREDENTIAL_SUBJECT string = useFederation ? identity.outputs.principalId : ''
output AZURE_FEDERATED_CREDENTIAL_AUDIENCE string = useFederation ? (!empty(federationAudience) ? federationAudience : federationAudiences[azureCloud]) : ''
