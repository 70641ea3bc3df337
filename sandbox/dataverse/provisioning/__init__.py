"""What an app needs to provision itself in a Dataverse org through the Web API: security roles and their
privileges, application users and their roles, webhook service endpoints and their processing steps (delivered by
sandbox.dataverse.webhooks). Reached through sandbox.dataverse.api (router.Provisioning) for the entity sets
in router.ENTITY_SETS.
"""
