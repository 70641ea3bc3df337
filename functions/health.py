"""Liveness probe: proves the worker is up and indexed its functions. Reveals no configuration."""

from __future__ import annotations

import json

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    # Deliberately touches no setting, secret or dependency: a probe that fails on configuration would
    # restart healthy workers for a problem a restart cannot fix.
    return func.HttpResponse(
        json.dumps({"status": "ok"}),
        status_code=200,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )
