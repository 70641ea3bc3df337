"""Who is calling us, inbound: validation of the tokens Entra issued to the app's signed-in users (user_tokens:
signature against the tenant's published keys, issuer, audience, lifetime, scopes).

Kept apart from shared.auth because the trust runs the other way: shared.auth holds our secrets and proves our
app to Entra and Dataverse; this package holds no secret and decides whether to believe a token someone else
presents. Sign-in flows for people (administrators during onboarding) belong here too.

May import shared.errors and shared.settings; nothing else of the project.
"""
