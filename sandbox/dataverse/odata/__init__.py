"""OData as the Dataverse stand-in speaks it: query options and Prefer headers (query), entity-set reads with
paging and change tracking (reads), `$batch` bodies (batch) and entity metadata (metadata).

May import the rest of sandbox.dataverse except service, api and orgs, which sit above it.
"""
