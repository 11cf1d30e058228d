"""Where log lines go and how they read: LOG_FORMAT=json (one object a line, for a log
collector; the default in production) or text (for a person at a terminal).

Every logger of the process goes through the root handler set here, uvicorn's included
(`userapi serve` hands logging to us), so a collector never meets a line it cannot parse.
"""

import logging

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from kernel.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def json_formatter() -> logging.Formatter:
    """time (ISO 8601, UTC), level, logger, message, and the record's `extra` fields."""
    return JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        # uvicorn's copy of its message with terminal colour codes: noise in a collector.
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


def configure_logging(settings: Settings) -> None:
    """Once per process; a process whose logging is already set up (a test runner's
    capture, an embedding server's own) is left as it is, as logging.basicConfig does."""
    handler = logging.StreamHandler()
    if settings.resolved_log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    # /ready asks Alembic for the revision; its per-call "Context impl" line is noise.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
