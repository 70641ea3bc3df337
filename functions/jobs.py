"""The scheduled S2S sweeps. The sync and health timers only plan a run and enqueue its units (``sweep-units``);
the queue-triggered ``sweep_unit`` does the work, so every instance the platform adds for the queue takes a share.
Schedules come from app settings (``%NAME%``); never ``run_on_startup`` (it fires on every scale-out and restart);
the schedule monitor on, so a missed run is caught up.
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions.services import get_services
from shared.jobs.units import SWEEP_QUEUE

logger = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_sweep(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logger.info("Sync sweep is past due; scheduling now")
    get_services().sweep_scheduler.start("sync")


@bp.timer_trigger(schedule="%HEALTH_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def health_sweep(timer: func.TimerRequest) -> None:
    get_services().sweep_scheduler.start("health")


# The same storage connection and base64 messages as the app's other queues (functions/webhooks.py).
@bp.queue_trigger(arg_name="msg", queue_name=SWEEP_QUEUE, connection="AzureWebJobsStorage")
def sweep_unit(msg: func.QueueMessage) -> None:
    """One unit (or a slice to expand). Raises on a failure so the host retries; the last attempt poisons the unit
    with its reason instead (shared.jobs.workers)."""
    text = msg.get_body().decode("utf-8", errors="replace")
    outcome = get_services().sweep_worker.handle(text, msg.dequeue_count or 1, msg.id)
    logger.info("Sweep queue message %s: %s", msg.id, outcome)


@bp.timer_trigger(schedule="%CERTIFICATE_EXPIRY_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def certificate_expiry_check(timer: func.TimerRequest) -> None:
    get_services().jobs.run_certificate_expiry()
