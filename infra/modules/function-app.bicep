// The function app on the Flex Consumption plan (Python 3.11, the version the tests run on) and its app settings.
// It runs as the one user-assigned identity: host storage, the deployment package, Application Insights and Key Vault
// are all reached with that identity; no key, connection string or password is in any setting.

@description('Required. Name of the function app; also the first label of its default host name.')
@minLength(2)
@maxLength(60)
param name string

@description('Optional. Azure region of the app. Defaults to the resource group location.')
param location string = resourceGroup().location

@description('Optional. Tags applied to the app; main.bicep adds azd-service-name so azd deploy finds it.')
param tags object = {}

@description('Required. Resource id of the Flex Consumption plan.')
param planResourceId string

@description('Required. Resource id of the user-assigned managed identity the app runs as.')
param identityResourceId string

@description('Required. Client id of that identity.')
param identityClientId string

@description('Required. Name of the storage account (host storage and the app data).')
param storageAccountName string

@description('Required. Blob service endpoint of the storage account, with trailing slash.')
param storageBlobEndpoint string

@description('Required. Queue service endpoint of the storage account.')
param storageQueueEndpoint string

@description('Required. Table service endpoint of the storage account.')
param storageTableEndpoint string

@description('Required. Storage endpoint suffix of the cloud (environment().suffixes.storage).')
param storageSuffix string

@description('Required. Blob container holding the deployment package.')
param deploymentContainerName string

@description('Required. Name of the Application Insights component (in this resource group).')
param appInsightsName string

@description('Optional. Python version of the Flex Consumption runtime.')
@allowed([
  '3.11'
])
param pythonVersion string = '3.11'

// "The lowest maximum scale is currently 40. The highest currently supported value is 1000."
// (learn.microsoft.com/azure/azure-functions/flex-consumption-plan#considerations)
@description('Optional. Most instances the app scales out to (40-1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Optional. Memory of each instance in MB.')
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Optional. CIDR ranges allowed to call the app; all other callers get 403. Empty: no restriction. The deployment (scm) site is not restricted by this list.')
param allowedIpRanges array = []

@description('Required. ENTRA_CLIENT_ID: application (client) id of the app registration.')
param entraClientId string

@description('Required. ENTRA_HOME_TENANT_ID: tenant id where the app is registered.')
param entraHomeTenantId string

@description('Required. APP_MODE: multi_tenant or single_tenant.')
param appMode string

@description('Required. AZURE_CLOUD: public, usgov or china.')
param azureCloud string

@description('Required. ENTRA_AUTHORITY_HOST; empty: the AZURE_CLOUD preset.')
param entraAuthorityHost string

@description('Required. DATAVERSE_DOMAIN_SUFFIXES; empty: the AZURE_CLOUD preset.')
param dataverseDomainSuffixes string

@description('Required. FEDERATION_AUDIENCE; empty: the AZURE_CLOUD preset.')
param federationAudience string

@description('Required. CREDENTIAL_SOURCE: key_vault or managed_identity_federation.')
param credentialSource string

@description('Required. KEY_VAULT_URL: URI of the vault holding the certificate.')
param keyVaultUrl string

@description('Required. KEY_VAULT_CERTIFICATE_NAME: name of the certificate in that vault.')
param keyVaultCertificateName string

@description('Required. CERTIFICATE_REFRESH_SECONDS.')
param certificateRefreshSeconds int

@description('Required. SEND_CERTIFICATE_CHAIN.')
param sendCertificateChain bool

@description('Required. TOKEN_CLIENT_CACHE_SIZE.')
param tokenClientCacheSize int

@description('Required. HTTP_TIMEOUT_SECONDS.')
param httpTimeoutSeconds int

@description('Required. DATAVERSE_TIMEOUT_SECONDS.')
param dataverseTimeoutSeconds int

@description('Required. DATAVERSE_MAX_ATTEMPTS.')
param dataverseMaxAttempts int

@description('Required. DATAVERSE_RETRY_BUDGET_SECONDS.')
param dataverseRetryBudgetSeconds int

@description('Required. DATAVERSE_SHARED_THROTTLE.')
param dataverseSharedThrottle bool

@description('Required. DATAVERSE_THROTTLE_REFRESH_MS.')
param dataverseThrottleRefreshMs int

@description('Required. CONSENT_STATE_TTL_SECONDS.')
param consentStateTtlSeconds int

@description('Required. APP_DISPLAY_NAME.')
param appDisplayName string

@description('Required. VERIFICATION_RETRY_DELAYS.')
param verificationRetryDelays string

@description('Required. WEBHOOK_MAX_BODY_BYTES.')
param webhookMaxBodyBytes int

@description('Required. WEBHOOK_SECRET_HEADER.')
param webhookSecretHeader string

@description('Required. WEBHOOK_SECRET_REQUIRED: refuse webhook deliveries without their org\'s own secret.')
param webhookSecretRequired bool

@description('Required. WEBHOOK_IMPERSONATE_INITIATING_USER.')
param webhookImpersonateInitiatingUser bool

@description('Required. WEBHOOK_SUBSCRIPTIONS.')
param webhookSubscriptions string

@description('Required. SECURITY_ROLE_NAME.')
param securityRoleName string

@description('Required. USER_API_ENABLED.')
param userApiEnabled bool

@description('Required. ONBOARDING_PROVISIONING.')
param onboardingProvisioning bool

@description('Required. WEBHOOK_MAX_DEQUEUE_COUNT; also overrides the host.json queue maxDequeueCount so the two agree.')
param webhookMaxDequeueCount int

@description('Required. WEBHOOK_SECRET_OVERLAP_SECONDS.')
param webhookSecretOverlapSeconds int

@description('Required. WEBHOOK_FILTERING_ATTRIBUTES (may be empty).')
param webhookFilteringAttributes string

@description('Required. SYNC_SCHEDULE.')
param syncSchedule string

@description('Required. HEALTH_SCHEDULE.')
param healthSchedule string

@description('Required. CERTIFICATE_EXPIRY_SCHEDULE.')
param certificateExpirySchedule string

@description('Required. HOUSEKEEPING_SCHEDULE.')
param housekeepingSchedule string

@description('Required. WEBHOOK_EVENT_RETENTION_DAYS.')
param webhookEventRetentionDays int

@description('Required. TENANT_HISTORY_RETENTION_DAYS.')
param tenantHistoryRetentionDays int

@description('Required. TENANT_HISTORY_KEEP.')
param tenantHistoryKeep int

@description('Required. SWEEP_CONCURRENCY.')
param sweepConcurrency int

@description('Required. SWEEP_TIME_BUDGET_SECONDS.')
param sweepTimeBudgetSeconds int

@description('Required. SWEEP_LEASE_SECONDS.')
param sweepLeaseSeconds int

@description('Required. SYNC_TABLES.')
param syncTables string

@description('Required. SYNC_PAGE_SIZE.')
param syncPageSize int

@description('Required. SYNC_CONTAINER: blob container of the sync sink (created by the storage module).')
param syncContainer string

@description('Required. CERTIFICATE_EXPIRY_WARNING_DAYS.')
param certificateExpiryWarningDays string

@description('Required. OIDC_AUDIENCES; empty: the client id and api://<client id>.')
param oidcAudiences string

@description('Required. OIDC_REQUIRED_SCOPE; empty: access_as_user unless OIDC_REQUIRED_ROLE is set.')
param oidcRequiredScope string

@description('Required. OIDC_REQUIRED_ROLE; empty: none.')
param oidcRequiredRole string

@description('Required. OIDC_V1_ISSUER_TEMPLATE; empty: the AZURE_CLOUD preset.')
param oidcV1IssuerTemplate string

@description('Required. OIDC_CLOCK_SKEW_SECONDS.')
param oidcClockSkewSeconds int

@description('Required. LIBRARY_LOG_LEVEL: level of the Azure SDK, MSAL and urllib3 loggers.')
param libraryLogLevel string

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

var accessRestrictions = [for (cidr, i) in allowedIpRanges: {
  name: 'allow-${i}'
  action: 'Allow'
  ipAddress: cidr
  priority: 100 + i
}]

// scaleAndConcurrency and the sweeps: the queue-triggered sweep_unit function scales on its own instances (Flex
// per-function scaling: every function other than HTTP, Blob (Event Grid) and Durable ones "scales individually", azure-docs
// articles/azure-functions/flex-consumption-plan.md#per-function-scaling), by queue length over its
// per-instance concurrency. That concurrency is host.json extensions.queues batchSize + newBatchThreshold
// (functions-bindings-storage-queue.md#host-json): `triggers` here takes only http.perInstanceConcurrency
// (Microsoft.Web FunctionsScaleAndConcurrencyTriggers), so it is not set for queues. maximumInstanceCount
// (default 100) bounds what every function group may add; the README's "Scheduled jobs" gives the arithmetic
// (instances needed = tenants x CPU per unit / interval) and when to raise it. 2048 MB: a unit waits on
// Dataverse and holds one page (<= 5,000 rows) at a time, so memory is not what limits it.
resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: public by design: customer administrators onboard from their own browsers and Dataverse posts webhooks from the internet; restrict callers with allowedIpRanges
  // checkov:skip=CKV_AZURE_17: callers (browsers, Dataverse webhooks) present no client certificates; webhooks are authenticated by function key and tenant secret
  // checkov:skip=CKV_AZURE_212: Flex Consumption manages instance counts itself (scale from zero); there is no minimum instance setting on the plan
  // checkov:skip=CKV_AZURE_213: the platform health check is not supported on Flex Consumption; the app serves GET /api/health for external probes
  // checkov:skip=CKV_AZURE_78: Flex Consumption rejects siteConfig.ftpsState (ARM 51021; Microsoft lists it as deprecated there, FTPS not supported); FTP publishing is off through the ftp basicPublishingCredentialsPolicies resource below
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityResourceId}': {}
    }
  }
  properties: {
    serverFarmId: planResourceId
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    // Key Vault references, should a setting ever use one, resolve with the same identity.
    keyVaultReferenceIdentity: identityResourceId
    // Flex Consumption refuses a site whose siteConfig has a property it does not take (ARM 400, code 51021, e.g.
    // Site.SiteConfig.FtpsState; see functions-app-settings#flex-consumption-plan-deprecations): only the properties
    // allowed, with their sources, in tests/infra/test_flex_consumption.py. FTP is off through the ftp
    // basicPublishingCredentialsPolicies resource below, not ftpsState (pycep reads at most 5 comment lines here).
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      ipSecurityRestrictions: accessRestrictions
      ipSecurityRestrictionsDefaultAction: empty(allowedIpRanges) ? 'Allow' : 'Deny'
      // azd deploy publishes through the scm site with an Entra token; keep it reachable from the deployer.
      scmIpSecurityRestrictionsUseMain: false
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityResourceId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// App settings. tests/infra/test_settings_contract.py reads this object as text: keep it one object literal with
// one `NAME: value` per line. The contract:
// - every field of shared.settings.Settings, upper-cased (AZURE_CLOUD included), is set here, except the
//   local-only settings STORAGE_CONNECTION_STRING, CERTIFICATE_PATH and CERTIFICATE_PASSWORD, which Azure must
//   never carry (storage is reached with the identity; CREDENTIAL_SOURCE certificate_file is for local work);
// - the other names are host and platform settings: AzureWebJobsStorage__*, AzureFunctionsJobHost__*,
//   APPLICATIONINSIGHTS_*. FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION must not be set on Flex
//   Consumption (functionAppConfig.runtime replaces them).
var appSettings = {
  AzureWebJobsStorage__blobServiceUri: storageBlobEndpoint
  AzureWebJobsStorage__queueServiceUri: storageQueueEndpoint
  AzureWebJobsStorage__tableServiceUri: storageTableEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureFunctionsJobHost__extensions__queues__maxDequeueCount: string(webhookMaxDequeueCount)
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  ENTRA_CLIENT_ID: entraClientId
  ENTRA_HOME_TENANT_ID: entraHomeTenantId
  APP_MODE: appMode
  AZURE_CLOUD: azureCloud
  ENTRA_AUTHORITY_HOST: entraAuthorityHost
  DATAVERSE_DOMAIN_SUFFIXES: dataverseDomainSuffixes
  FEDERATION_AUDIENCE: federationAudience
  CREDENTIAL_SOURCE: credentialSource
  KEY_VAULT_URL: keyVaultUrl
  KEY_VAULT_CERTIFICATE_NAME: keyVaultCertificateName
  KEY_VAULT_VERIFY_CHALLENGE_RESOURCE: 'true'
  MANAGED_IDENTITY_CLIENT_ID: identityClientId
  CERTIFICATE_REFRESH_SECONDS: string(certificateRefreshSeconds)
  SEND_CERTIFICATE_CHAIN: sendCertificateChain ? 'true' : 'false'
  TOKEN_CLIENT_CACHE_SIZE: string(tokenClientCacheSize)
  HTTP_TIMEOUT_SECONDS: string(httpTimeoutSeconds)
  DATAVERSE_TIMEOUT_SECONDS: string(dataverseTimeoutSeconds)
  DATAVERSE_MAX_ATTEMPTS: string(dataverseMaxAttempts)
  DATAVERSE_RETRY_BUDGET_SECONDS: string(dataverseRetryBudgetSeconds)
  DATAVERSE_SHARED_THROTTLE: dataverseSharedThrottle ? 'true' : 'false'
  DATAVERSE_THROTTLE_REFRESH_MS: string(dataverseThrottleRefreshMs)
  STORAGE_ACCOUNT_NAME: storageAccountName
  STORAGE_SUFFIX: storageSuffix
  ONBOARDING_REDIRECT_URI: 'https://${functionApp.properties.defaultHostName}/api/consent/callback'
  CONSENT_STATE_TTL_SECONDS: string(consentStateTtlSeconds)
  APP_DISPLAY_NAME: appDisplayName
  VERIFICATION_RETRY_DELAYS: verificationRetryDelays
  WEBHOOK_MAX_BODY_BYTES: string(webhookMaxBodyBytes)
  WEBHOOK_SECRET_HEADER: webhookSecretHeader
  WEBHOOK_IMPERSONATE_INITIATING_USER: webhookImpersonateInitiatingUser ? 'true' : 'false'
  WEBHOOK_SUBSCRIPTIONS: webhookSubscriptions
  SECURITY_ROLE_NAME: securityRoleName
  USER_API_ENABLED: userApiEnabled ? 'true' : 'false'
  ONBOARDING_PROVISIONING: onboardingProvisioning ? 'true' : 'false'
  WEBHOOK_RECEIVER_URL: 'https://${functionApp.properties.defaultHostName}/api/webhooks/dataverse'
  // A Key Vault reference (app-service-key-vault-references: @Microsoft.KeyVault(SecretUri=…)) to the secret the
  // key-vault module writes from the azd environment's WEBHOOK_FUNCTION_KEY (infra/README.md, Deploy step 7).
  WEBHOOK_FUNCTION_KEY: '@Microsoft.KeyVault(SecretUri=${keyVaultUrl}secrets/webhook-function-key/)'
  WEBHOOK_SECRET_REQUIRED: webhookSecretRequired ? 'true' : 'false'
  WEBHOOK_MAX_DEQUEUE_COUNT: string(webhookMaxDequeueCount)
  WEBHOOK_SECRET_OVERLAP_SECONDS: string(webhookSecretOverlapSeconds)
  WEBHOOK_FILTERING_ATTRIBUTES: webhookFilteringAttributes
  SYNC_SCHEDULE: syncSchedule
  HEALTH_SCHEDULE: healthSchedule
  CERTIFICATE_EXPIRY_SCHEDULE: certificateExpirySchedule
  HOUSEKEEPING_SCHEDULE: housekeepingSchedule
  WEBHOOK_EVENT_RETENTION_DAYS: string(webhookEventRetentionDays)
  TENANT_HISTORY_RETENTION_DAYS: string(tenantHistoryRetentionDays)
  TENANT_HISTORY_KEEP: string(tenantHistoryKeep)
  SWEEP_CONCURRENCY: string(sweepConcurrency)
  SWEEP_TIME_BUDGET_SECONDS: string(sweepTimeBudgetSeconds)
  SWEEP_LEASE_SECONDS: string(sweepLeaseSeconds)
  SYNC_TABLES: syncTables
  SYNC_PAGE_SIZE: string(syncPageSize)
  SYNC_CONTAINER: syncContainer
  CERTIFICATE_EXPIRY_WARNING_DAYS: certificateExpiryWarningDays
  OIDC_AUDIENCES: oidcAudiences
  OIDC_REQUIRED_SCOPE: oidcRequiredScope
  OIDC_REQUIRED_ROLE: oidcRequiredRole
  OIDC_V1_ISSUER_TEMPLATE: oidcV1IssuerTemplate
  OIDC_CLOCK_SKEW_SECONDS: string(oidcClockSkewSeconds)
  LIBRARY_LOG_LEVEL: libraryLogLevel
}

resource appSettingsConfig 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov reads every sites/config resource as the web (siteConfig) one; this is the appsettings one, a bag of
  // key/value pairs, so its web-config checks do not apply. The site's own siteConfig is checked on the site.
  // checkov:skip=CKV_AZURE_63: appsettings config, not the web config (HTTP logging is a siteConfig property)
  // checkov:skip=CKV_AZURE_65: appsettings config, not the web config (detailed errors is a siteConfig property)
  // checkov:skip=CKV_AZURE_66: appsettings config, not the web config (failed request tracing is a siteConfig property)
  // checkov:skip=CKV_AZURE_80: appsettings config, not the web config; a Python app has no .NET Framework version
  // checkov:skip=CKV_AZURE_88: appsettings config, not the web config; Flex Consumption has no Azure Files content share
  // checkov:skip=CKV_AZURE_13: appsettings config, not authsettings; App Service Authentication would block the anonymous onboarding pages and Dataverse webhooks
  // checkov:skip=CKV_AZURE_222: appsettings config, not the web config; public network access is decided (and skipped with its reason) on the site
  parent: functionApp
  name: 'appsettings'
  properties: appSettings
}

// No FTP or basic-auth publishing: deployments authenticate with Entra ID. On Flex Consumption these policies are
// what keeps FTP off (siteConfig.ftpsState is rejected there).
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output resourceId string = functionApp.id
output defaultHostName string = functionApp.properties.defaultHostName
output onboardingRedirectUri string = 'https://${functionApp.properties.defaultHostName}/api/consent/callback'
