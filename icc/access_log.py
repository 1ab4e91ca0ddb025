"""uvicorn's access log as ICC's services run it (`ICC_ACCESS_LOG`: `errors`, `all` or `off`).

Ingest takes webhooks at thousands of requests a second, and an access line per request cost its
worker about 15 % of its CPU (the record, its formatting and a write, per request). Those lines
say little that ICC does not keep already: every message taken is stored raw with its source and
endpoint, and a refused one is kept in the quarantine with the reason (all but rate-limited
ones, which this log then shows). So by default (`errors`) only
requests answered with a 4xx or 5xx status are logged: a bad signature, a rate limit, a malformed
message, a failure. `all` logs every request, as uvicorn does by default; `off` logs none.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from shared.settings import AccessLog

ACCESS_LOGGER = "uvicorn.access"
ERROR_STATUS = 400


class ErrorsOnly(logging.Filter):
    """Passes uvicorn access records whose status is an error (400 and above).

    uvicorn logs a request with the arguments (client, method, path, HTTP version, status). A
    record of another shape passes: a line kept by mistake costs less than one lost.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[4], int):
            return args[4] >= ERROR_STATUS
        return True


def uvicorn_log_config(mode: AccessLog) -> dict[str, Any]:
    """uvicorn's own logging configuration, with the access logger filtered for `errors`.

    Given to uvicorn as `log_config`, it is applied in every worker process (a gateway with several
    workers included). With `off`, uvicorn is also told not to log access at all (`access_log=False`),
    which skips making the records.
    """
    config = copy.deepcopy(LOGGING_CONFIG)
    if mode == "errors":
        config.setdefault("filters", {})["errors_only"] = {"()": f"{__name__}.ErrorsOnly"}
        config["loggers"][ACCESS_LOGGER]["filters"] = ["errors_only"]
    return config


def uvicorn_cli_options(mode: AccessLog, folder: Path) -> list[str]:
    """The same logging for a `python -m uvicorn` process (the benchmarks' bare baselines), whose
    configuration must come from a file: written into `folder`."""
    path = folder / f"uvicorn-logging-{mode}.json"
    path.write_text(json.dumps(uvicorn_log_config(mode)))
    return ["--log-config", str(path), *(["--no-access-log"] if mode == "off" else [])]
