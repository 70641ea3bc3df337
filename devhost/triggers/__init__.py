"""Non-HTTP triggers on the development host: queue-triggered functions polled from Azurite as the Functions host's
queue extension polls Azure Storage, and timer functions on their NCRONTAB schedules, each also fired on demand
through the host's own `POST /admin/functions/<name>`.
"""
