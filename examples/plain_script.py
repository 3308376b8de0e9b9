"""A plain script whose logging is configured with dictConfig and streamed live by wslogging.

Run it, then watch from another terminal with the command it prints::

    python examples/plain_script.py

The port is ``$WSLOGGING_PORT`` (default 3000; 0 picks a free one). The key is
``$WSLOGGING_API_KEY``; without it, the handler makes one up and prints it to stderr.
"""

from __future__ import annotations

import logging
import logging.config
import os
import random
import time

import wslogging

PORT = int(os.environ.get("WSLOGGING_PORT", "3000"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "console": {"format": "%(asctime)s %(levelname)-8s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "console", "level": "INFO"},
        # No api_keys: the handler reads $WSLOGGING_API_KEY, or prints a new key to stderr.
        "live": {"class": "wslogging.WebSocketHandler", "port": PORT, "level": "DEBUG"},
    },
    "root": {"level": "DEBUG", "handlers": ["console", "live"]},
}


def where_to_connect() -> str:
    """The commands to watch this script, with the key when it came from the environment."""
    live = next(
        h for h in logging.getLogger().handlers if isinstance(h, wslogging.WebSocketHandler)
    )
    key = os.environ.get("WSLOGGING_API_KEY", "").split(",")[0].strip() or "KEY-FROM-ABOVE"
    return (
        f"Watch the logs:\n"
        f'  curl -N -H "Authorization: Bearer {key}" {live.url}/api/get-logs-stream\n'
        f'  curl -H "Authorization: Bearer {key}" {live.url}/api/logs'
    )


def main() -> None:
    logging.config.dictConfig(LOGGING)
    print(where_to_connect(), flush=True)
    log = logging.getLogger("plain.worker")
    job = 0
    try:
        while True:
            job += 1
            took = round(random.uniform(5, 500), 1)
            log.debug("picked job %d", job, extra={"job": job})
            if job % 10 == 0:
                try:
                    1 / 0  # noqa: B018 - an error on purpose, to show a traceback
                except ZeroDivisionError:
                    log.exception("job %d failed", job, extra={"job": job})
            elif took > 400:
                log.warning("job %d was slow", job, extra={"job": job, "duration_ms": took})
            else:
                log.info("job %d done", job, extra={"job": job, "duration_ms": took})
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopped")


if __name__ == "__main__":
    main()
