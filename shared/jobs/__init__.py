"""Scheduled S2S work over every onboarded tenant: the sweeps (sweeps: sync, health, certificate expiry, with
their concurrency and time budget), incremental sync with checkpoints (sync) and where changes go (sinks).

May import shared.errors, shared.settings, shared.dataverse, shared.tenants and shared.telemetry.
"""
