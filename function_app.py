"""Composition only: quiets the library loggers and registers the blueprints in ``functions/``.

The host imports this module to index functions, so it does no I/O, builds no SDK client and imports no heavy
SDK: an exception here would hide every function, and slow imports lengthen every cold start.
"""

import azure.functions as func

from functions.health import bp as health_bp
from functions.housekeeping import bp as housekeeping_bp
from functions.jobs import bp as jobs_bp
from functions.onboarding import bp as onboarding_bp
from functions.user_api import bp as user_api_bp
from functions.webhooks import bp as webhooks_bp
from shared.settings import library_log_level
from shared.telemetry import quiet_libraries

# Before any function runs: the worker forwards every INFO record to Application Insights, and azure-core alone
# writes one per request and response header block (shared/telemetry.py says why host.json cannot filter them).
quiet_libraries(library_log_level())

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(health_bp)
app.register_functions(housekeeping_bp)
app.register_functions(jobs_bp)
app.register_functions(onboarding_bp)
app.register_functions(user_api_bp)
app.register_functions(webhooks_bp)
