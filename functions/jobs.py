"""Timer functions: the scheduled S2S sweeps. Schedules come from app settings (``%NAME%``); never
``run_on_startup`` (it fires on every scale-out and restart); the schedule monitor on, so a missed run is caught up.
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions.services import get_services

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_sweep(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logger.info("Sync sweep is past due; running now")
    get_services().jobs.run_sync()


@bp.timer_trigger(schedule="%HEALTH_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def health_sweep(timer: func.TimerRequest) -> None:
    get_services().jobs.run_health()


@bp.timer_trigger(schedule="%CERTIFICATE_EXPIRY_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def certificate_expiry_check(timer: func.TimerRequest) -> None:
    get_services().jobs.run_certificate_expiry()
