"""How the app proves who it is, outbound: app-only tokens per tenant from MSAL (token_provider), the client
assertions it signs or borrows (client_assertions: a certificate, or a managed identity's token through a federated
credential), where the certificate comes from (certificate_sources: Key Vault or a file; certificates: parsing and
thumbprints), when a new certificate version may sign (certificate_rotation, proven by certificate_canary), the
app's own Azure credential for Azure resources (azure_identity) and the AADSTS catalogue.

May import shared.errors and shared.settings; nothing else of the project.
"""
