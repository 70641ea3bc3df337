#!/usr/bin/env pwsh
# Windows twin of add-federated-credential.sh (PowerShell 7, `pwsh`): in the secretless mode
# (CREDENTIAL_SOURCE=managed_identity_federation), make the app's user-assigned managed identity a federated identity
# credential (FIC) of the app registration. The azd postprovision hook runs this on Windows and the .sh elsewhere; it
# can also be run by hand after `azd provision` (`azd env get-values` supplies the variables).
#
# Same steps as the .sh, kept in step by tests/infra/test_azd_workflow.py: Microsoft Graph
# PATCH /applications(appId='{appId}')/federatedIdentityCredentials(name='{name}') with `Prefer: create-if-missing`
# (an upsert: running it again is harmless), through `az rest`. The signed-in user must own the app registration or
# hold Application Administrator (or Cloud Application Administrator).
#
# "Both the Microsoft Entra app and managed identity must belong to the same tenant."
# (learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity): main.bicep
# already refuses to deploy otherwise; this script checks again because it can also be run by hand.
#
# Reads: ENTRA_CLIENT_ID, ENTRA_HOME_TENANT_ID, AZURE_ENV_NAME and the provision outputs AZURE_TENANT_ID,
# AZURE_FEDERATED_CREDENTIAL_ISSUER, AZURE_FEDERATED_CREDENTIAL_SUBJECT, AZURE_FEDERATED_CREDENTIAL_AUDIENCE.
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

function Get-Setting([string] $Name) {
    return [Environment]::GetEnvironmentVariable($Name)
}

function Get-RequiredSetting([string] $Name, [string] $Hint) {
    $value = Get-Setting $Name
    if ([string]::IsNullOrEmpty($value)) {
        Write-Error "federated credential: $Name is missing; $Hint"
        exit 1
    }
    return $value
}

# Inside an azd hook the environment is already loaded; by hand, load it from azd when available.
if ($null -eq (Get-Setting 'AZURE_FEDERATED_CREDENTIAL_SUBJECT') -and (Get-Command azd -ErrorAction SilentlyContinue)) {
    foreach ($line in (azd env get-values)) {
        if ($line -match '^([A-Za-z_][A-Za-z0-9_]*)="(.*)"$') {
            [Environment]::SetEnvironmentVariable($Matches[1], $Matches[2])
        }
    }
}

$subject = Get-Setting 'AZURE_FEDERATED_CREDENTIAL_SUBJECT'
if ([string]::IsNullOrEmpty($subject)) {
    Write-Output 'federated credential: not needed (CREDENTIAL_SOURCE is not managed_identity_federation)'
    exit 0
}

$issuer = Get-RequiredSetting 'AZURE_FEDERATED_CREDENTIAL_ISSUER' 'run azd provision first'
$audience = Get-RequiredSetting 'AZURE_FEDERATED_CREDENTIAL_AUDIENCE' 'run azd provision first'
$appId = Get-RequiredSetting 'ENTRA_CLIENT_ID' 'set ENTRA_CLIENT_ID (azd env set ENTRA_CLIENT_ID <application id>)'
$homeTenant = Get-RequiredSetting 'ENTRA_HOME_TENANT_ID' 'set ENTRA_HOME_TENANT_ID (azd env set ENTRA_HOME_TENANT_ID <tenant id>)'
$identityTenant = Get-RequiredSetting 'AZURE_TENANT_ID' 'run azd provision first'

if ($identityTenant.ToLowerInvariant() -ne $homeTenant.ToLowerInvariant()) {
    Write-Error ("federated credential: the managed identity is in tenant $identityTenant but the app registration " +
        "(ENTRA_HOME_TENANT_ID) is in tenant $homeTenant; a managed identity can only be a federated credential of an " +
        "app registration in its own tenant. Deploy into a subscription of tenant $homeTenant, or use " +
        'CREDENTIAL_SOURCE=key_vault.')
    exit 1
}

# FIC names: letters, digits, dashes and underscores.
$envName = Get-Setting 'AZURE_ENV_NAME'
if ([string]::IsNullOrEmpty($envName)) { $envName = 'app' }
$name = 'azd-' + ($envName -replace '[^A-Za-z0-9_-]', '-') + '-managed-identity'

# Microsoft Graph lives at a different host in each cloud; ask the Azure CLI for the active cloud's.
$graph = (az cloud show --query endpoints.microsoftGraphResourceId --output tsv)
if ($LASTEXITCODE -ne 0) { Write-Error 'federated credential: `az cloud show` failed; run az login'; exit 1 }
$graph = $graph.Trim().TrimEnd('/')

# The body goes through a file: JSON quotes do not survive the Windows command line to az.cmd intact.
$body = [ordered]@{
    issuer      = $issuer
    subject     = $subject
    audiences   = @($audience)
    description = "User-assigned managed identity of the azd environment $(Get-Setting 'AZURE_ENV_NAME')"
} | ConvertTo-Json -Compress
$bodyFile = New-TemporaryFile
try {
    Set-Content -LiteralPath $bodyFile -Value $body -Encoding utf8NoBOM
    Write-Output "federated credential: adding '$name' (subject $subject) to app $appId"
    az rest `
        --method PATCH `
        --resource $graph `
        --url "$graph/v1.0/applications(appId='$appId')/federatedIdentityCredentials(name='$name')" `
        --headers 'Content-Type=application/json' 'Prefer=create-if-missing' `
        --body "@$bodyFile" `
        --output none
    if ($LASTEXITCODE -ne 0) { Write-Error 'federated credential: the Microsoft Graph request failed'; exit 1 }
}
finally {
    Remove-Item -LiteralPath $bodyFile -ErrorAction SilentlyContinue
}
Write-Output 'federated credential: done'
