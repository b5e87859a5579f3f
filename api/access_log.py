"""uvicorn's access log without the agents' routine traffic.

10,000 machines' agents each poll every 30 s and post telemetry every few seconds: logged, that is
hundreds of identical lines a second that bury what a person reads the log for, and formatting them
took a tenth of a poll's CPU. Their successful requests are left out; their refusals and errors, and
every request of people and bots, are logged as before. `/metrics` counts every request either way.
"""

import logging

AGENT_PATHS = "/api/v1/agent/"
_ACCESS_LOGGER = "uvicorn.access"


class QuietAgents(logging.Filter):
    """Drops an access line for a request under `AGENT_PATHS` that was answered below 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, path with query, HTTP version, status)
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        path, status = args[2], args[4]
        routine = isinstance(status, int) and status < 400
        return not (routine and isinstance(path, str) and path.startswith(AGENT_PATHS))


def quiet_agent_access_lines() -> None:
    """Install the filter once per process (every worker builds its own app)."""
    access = logging.getLogger(_ACCESS_LOGGER)
    if not any(isinstance(f, QuietAgents) for f in access.filters):
        access.addFilter(QuietAgents())
