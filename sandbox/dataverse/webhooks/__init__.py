"""Dataverse webhooks in the stand-in: registered service endpoints and steps (registration), the
RemoteExecutionContext a step sends (context), deliveries with Dataverse's retries and timeout (delivery), the
per-org ordered workers (keyed_workers) and the hub that turns an org's journalled changes into deliveries (hub).

May import sandbox.dataverse's org, schema, events and errors, and sandbox.counters.
"""
