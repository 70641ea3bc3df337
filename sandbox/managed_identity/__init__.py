"""The App Service managed identity endpoint stand-in (service). The identities themselves are Entra service
principals, kept in sandbox.entra.directory; tokens are minted by sandbox.entra.tokens.

May import sandbox.entra and sandbox.net.
"""
