"""Who is calling us, inbound: validation of the tokens Entra issued to the app's signed-in users (user_tokens:
signature against the tenant's published keys, issuer, audience, lifetime, scopes), and the customer
administrator's OpenID Connect sign-in during onboarding (administrators).

Kept apart from shared.auth because the trust runs the other way: shared.auth holds our secrets and proves our
app to Entra and Dataverse; this package holds no secret and decides whether to believe a token someone else
presents. Sign-in flows for people (administrators during onboarding) belong here too.

May import shared.errors, shared.settings and shared.auth (the sign-in's confidential client proves itself with
the app's credential); nothing else of the project.
"""
