"""The Entra ID stand-in: its directory (tenants, users, apps, service principals, managed identities), the token
endpoint (service) with client assertions and federated credentials (client_assertion), admin consent (consent,
consent_page), signing keys and JWKS (signing), issuers, the claims of app, managed identity and user tokens
(tokens, user_tokens) and Entra's error answers (errors).

May import sandbox.net, sandbox.identifiers, sandbox.counters and sandbox.faults.
"""
