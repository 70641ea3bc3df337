"""The functions' door to the composition root, imported on call: ``shared.bootstrap`` pulls in cryptography and
the Azure SDKs, which indexing ``function_app`` must not."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.bootstrap import Services


def get_services() -> Services:
    from shared.bootstrap import get_services as services
    from shared.settings import MonitorSettings
    from shared.telemetry import enable_azure_monitor

    enable_azure_monitor(MonitorSettings.from_env())  # once per process; see shared/telemetry.py
    return services()
