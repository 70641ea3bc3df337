"""Dataverse webhooks: the receiver's checks and fast acceptance (intake), where accepted deliveries wait
(store: queue, payload blobs, processed-change records), the handlers that run later with the org's S2S client
(processing), and parsing of the RemoteExecutionContext body (remote_context).

May import shared.errors, shared.settings, shared.dataverse, shared.tenants and shared.telemetry.
"""
