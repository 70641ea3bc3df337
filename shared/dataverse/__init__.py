"""The Dataverse Web API, called as the app's application user: the client for one org (client, with its OData
shapes in odata), the per-org client factory (clients), typed errors (errors), `$batch` bodies (batch), the
per-org admission and pacing (governor), Retry-After windows shared across instances (throttle_board) and the
rules for an org URL (org_url).

May import shared.errors, shared.settings, shared.auth (the token it sends) and shared.telemetry (log
dimensions); never storage or tenants.
"""
