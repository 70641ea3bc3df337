"""The Dataverse Web API stand-in: orgs and their admin operations (orgs), an org's rows and users (org), the
tables it knows (schema), requests and answers (wire), the Web API (api) behind authentication and service
protection (service, throttle, security), Dataverse's error codes (errors) and the change journal writes feed
(events). OData reading, `$batch` and metadata live in odata/; webhooks (steps, RemoteExecutionContext, delivery)
in webhooks/.

May import sandbox.entra (token checks and directory lookups), sandbox.net, sandbox.identifiers and
sandbox.counters.
"""
