"""Composition only: registers the blueprints in ``functions/``.

The host imports this module to index functions, so it does no I/O, builds no SDK client and imports no heavy
SDK: an exception here would hide every function, and slow imports lengthen every cold start.
"""

import azure.functions as func

from functions.health import bp as health_bp
from functions.jobs import bp as jobs_bp
from functions.onboarding import bp as onboarding_bp
from functions.user_api import bp as user_api_bp
from functions.webhooks import bp as webhooks_bp

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(health_bp)
app.register_functions(jobs_bp)
app.register_functions(onboarding_bp)
app.register_functions(user_api_bp)
app.register_functions(webhooks_bp)
