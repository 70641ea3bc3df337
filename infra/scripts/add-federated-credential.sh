#!/bin/sh
# Secretless mode (CREDENTIAL_SOURCE=managed_identity_federation): make the app's user-assigned managed identity a
# federated identity credential (FIC) of the app registration, so the app signs in with the identity's token
# instead of a certificate. The azd postprovision hook runs this; it can also be run by hand after `azd provision`
# (`azd env get-values` supplies the variables) or with the variables exported.
#
# Why a script and not Bicep: the Microsoft Graph Bicep extension can only address applications it manages itself
# (by uniqueName), and the app registration is created outside this template.
#
# Uses Microsoft Graph: PATCH /applications(appId='{appId}')/federatedIdentityCredentials(name='{name}') with
# `Prefer: create-if-missing` (upsert, so running it again is harmless). The signed-in user must own the app
# registration or hold Application Administrator (or Cloud Application Administrator).
#
# Reads: ENTRA_CLIENT_ID, ENTRA_HOME_TENANT_ID, AZURE_ENV_NAME and the provision outputs AZURE_TENANT_ID,
# AZURE_FEDERATED_CREDENTIAL_ISSUER, AZURE_FEDERATED_CREDENTIAL_SUBJECT (the identity's principal id),
# AZURE_FEDERATED_CREDENTIAL_AUDIENCE.
#
# "Both the Microsoft Entra app and managed identity must belong to the same tenant."
# (learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity): main.bicep
# already refuses to deploy otherwise; this script checks again because it can also be run by hand.
#
# infra/scripts/add-federated-credential.ps1 is the same script for Windows (azure.yaml runs one or the other).
set -eu

# Inside an azd hook the environment is already loaded; by hand, load it from azd when available.
if [ -z "${AZURE_FEDERATED_CREDENTIAL_SUBJECT+x}" ] && command -v azd >/dev/null 2>&1; then
  eval "$(azd env get-values)"
fi

subject="${AZURE_FEDERATED_CREDENTIAL_SUBJECT:-}"
if [ -z "$subject" ]; then
  echo "federated credential: not needed (CREDENTIAL_SOURCE is not managed_identity_federation)"
  exit 0
fi

issuer="${AZURE_FEDERATED_CREDENTIAL_ISSUER:?missing; run azd provision first}"
audience="${AZURE_FEDERATED_CREDENTIAL_AUDIENCE:?missing; run azd provision first}"
app_id="${ENTRA_CLIENT_ID:?set ENTRA_CLIENT_ID (azd env set ENTRA_CLIENT_ID <application id>)}"
home_tenant="${ENTRA_HOME_TENANT_ID:?set ENTRA_HOME_TENANT_ID (azd env set ENTRA_HOME_TENANT_ID <tenant id>)}"
identity_tenant="${AZURE_TENANT_ID:?missing; run azd provision first}"

lower() { printf '%s' "$1" | tr 'A-Z' 'a-z'; }
if [ "$(lower "$identity_tenant")" != "$(lower "$home_tenant")" ]; then
  echo "federated credential: the managed identity is in tenant $identity_tenant but the app registration" \
    "(ENTRA_HOME_TENANT_ID) is in tenant $home_tenant; a managed identity can only be a federated credential of an" \
    "app registration in its own tenant. Deploy into a subscription of tenant $home_tenant, or use" \
    "CREDENTIAL_SOURCE=key_vault." >&2
  exit 1
fi
# FIC names: letters, digits, dashes and underscores.
name="azd-$(printf '%s' "${AZURE_ENV_NAME:-app}" | tr -c 'A-Za-z0-9_-' '-')-managed-identity"

# Microsoft Graph lives at a different host in each cloud; ask the Azure CLI for the active cloud's.
graph="$(az cloud show --query endpoints.microsoftGraphResourceId --output tsv)"
graph="${graph%/}"

echo "federated credential: adding '$name' (subject $subject) to app $app_id"
az rest \
  --method PATCH \
  --resource "$graph" \
  --url "$graph/v1.0/applications(appId='$app_id')/federatedIdentityCredentials(name='$name')" \
  --headers "Content-Type=application/json" "Prefer=create-if-missing" \
  --body "{\"issuer\": \"$issuer\", \"subject\": \"$subject\", \"audiences\": [\"$audience\"], \"description\": \"User-assigned managed identity of the azd environment ${AZURE_ENV_NAME:-}\"}" \
  --output none
echo "federated credential: done"
