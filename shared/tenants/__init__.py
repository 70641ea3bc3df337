"""The customers: the tenant registry and its history (registry), pending onboarding sign-ins (consent_states), the
index from org host to tenant (org_index) and the onboarding service that verifies a tenant and records it
(onboarding).

May import shared.errors, shared.settings, shared.auth, shared.dataverse, shared.signin and shared.telemetry.
"""
