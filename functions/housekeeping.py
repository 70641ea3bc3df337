"""Timer function: the housekeeping job (shared.jobs.housekeeping). Its schedule comes from the app setting
``HOUSEKEEPING_SCHEDULE`` (``%NAME%``); never ``run_on_startup`` (it fires on every scale-out and restart); the
schedule monitor on, so a missed run is caught up. A run is bounded and idempotent: a repeated or overlapping run
deletes nothing twice.
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions.services import get_services

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.timer_trigger(schedule="%HOUSEKEEPING_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def housekeeping(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logger.info("Housekeeping is past due; running now")
    get_services().housekeeping.run()
