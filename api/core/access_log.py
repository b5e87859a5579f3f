"""uvicorn's access log without the agents' routine traffic.

10,000 machines' agents each poll every 30 s and post telemetry every few seconds: logged, that is
hundreds of identical lines a second that bury what a person reads the log for, and formatting them
took a tenth of a poll's CPU. Their successful requests are left out; their refusals and errors, and
every request of people and bots, are logged as before. `/metrics` counts every request either way.

Every line that is logged has the values of secret-named query parameters redacted (`RedactSecrets`):
such a request is refused (api/core/transport.py), but uvicorn logs the refusal with its whole URL.
"""

import logging

from api.core.transport import redact

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


class RedactSecrets(logging.Filter):
    """Rewrites an access line's path so that no secret-named query parameter's value is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, _, query = args[2].partition("?")
            if query:
                record.args = (*args[:2], f"{path}?{redact(query)}", *args[3:])
        return True


def quiet_agent_access_lines() -> None:
    """Install the filters once per process (every worker builds its own app)."""
    access = logging.getLogger(_ACCESS_LOGGER)
    for kind in (QuietAgents, RedactSecrets):
        if not any(isinstance(f, kind) for f in access.filters):
            access.addFilter(kind())
