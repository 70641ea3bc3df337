"""Request counters that tests and the bench read to see what the clients really sent.

An event is a name plus labels, e.g. `bump("token", tenant=t, client_id=c)`. Every subset of the labels is
counted, so `count("token")` is the total, `count("token", tenant=t)` the total for one tenant, and
`count("token", tenant=t, client_id=c)` the total for one app in that tenant. Label values compare as strings.

Events the stand-ins record (labels in brackets):
- openid_configuration [tenant, version]   every discovery document served
- jwks [tenant]                             every key set served
- token [tenant, client_id]                 every POST to a token endpoint, accepted or not
- token_issued [tenant, client_id, resource]
- token_error [tenant, code]                code = the AADSTS number
- client_assertion [client_id, kind, alg, thumbprint]  assertions that validated; kind certificate|federated,
                                            thumbprint "x5t#S256" or "x5t"
- admin_consent_page [client_id, version]  consent pages shown (version 1.0|2.0)
- admin_consent [tenant, client_id, decision]  decisions posted with a valid nonce; decision accept|cancel
- admin_consent_error [code]                error pages shown; code = the AADSTS number, or "page" for a bad form
- msi_request []                            every call to the managed identity endpoint
- msi_token [client_id, resource]           managed identity tokens issued
- vault_request [status]                    every Key Vault request, including 401 challenges
- vault_get [name, version]                 secret values returned
- vault_list [name]                         list calls (name only for version lists)
- proxy_connect [host, status]              every CONNECT to the Dataverse proxy (200 tunnelled, 403 refused)
- dataverse_request [org, status, method]   every HTTP request to a Dataverse org (a $batch counts once)
- dataverse_operation [org, method]         every operation run, including each part of a $batch
- dataverse_throttled [org, code]           429s: code 0x80072326 (concurrency) or 0x80072322 (request rate)
- dataverse_request_in_retry_after [org]    requests that arrived while a Retry-After the same user was given
                                            had not passed yet (a well-behaved client scores 0); arrivals in
                                            the first 0.25 s after the 429 count as already in flight
- webhook_event [org, entity, message]      webhook events sent (one per matching webhook and change, retries
                                            not counted)
- fault_injected [service, endpoint, tenant, status]  requests an injected fault hit (sandbox.faults); service
                                            entra|keyvault|dataverse, endpoint token|discovery|other and tenant
                                            for Entra only, status the injected status or "delay"
- webhook_delivery [org, status]            every webhook HTTP attempt; status is the HTTP status, or
                                            "timeout" / "connection_error" when no response came
Peak Dataverse concurrency is a maximum, not a count: `SandboxState.dataverse_peak_concurrency(org_url)`.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter

_Key = tuple[str, frozenset[tuple[str, str]]]


class Counters:
    """Thread-safe event counts behind the lock they are given."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._counts: Counter[_Key] = Counter()

    def bump(self, name: str, /, **labels: object) -> None:
        """Count one event under `name` and under every combination of its labels."""
        pairs = sorted((key, str(value)) for key, value in labels.items() if value is not None)
        with self._lock:
            for size in range(len(pairs) + 1):
                for subset in itertools.combinations(pairs, size):
                    self._counts[(name, frozenset(subset))] += 1

    def count(self, name: str, /, **labels: object) -> int:
        """How many `name` events carried all of `labels` (0 when none)."""
        key = (name, frozenset((k, str(v)) for k, v in labels.items()))
        with self._lock:
            return self._counts[key]

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()

    def snapshot(self) -> dict[str, int]:
        """Totals per event name (unlabelled counts only), e.g. for a bench report."""
        with self._lock:
            return {name: n for (name, labels), n in self._counts.items() if not labels}
