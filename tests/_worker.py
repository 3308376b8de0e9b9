"""A worker process for the multi-process tests: logging configured by dictConfig only.

``python tests/_worker.py PORT [INTERVAL]`` configures a WebSocketHandler on ``PORT`` (key
``test-key``), prints one JSON line ``{"pid": ..., "role": ...}`` and then logs ``tick N`` every
``INTERVAL`` seconds (default 0.02). It exits cleanly (``logging.shutdown()``) when its stdin
closes; a test may also kill it outright.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
import threading
import time


def main() -> None:
    port = int(sys.argv[1])
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 0.02
    logging.config.dictConfig(
        {
            "version": 1,
            "handlers": {
                "live": {
                    "class": "wslogging.WebSocketHandler",
                    "port": port,
                    "api_keys": "test-key",
                }
            },
            "loggers": {"app": {"level": "INFO", "handlers": ["live"]}},
        }
    )
    (handler,) = logging.getLogger("app").handlers
    print(json.dumps({"pid": os.getpid(), "role": handler.role}), flush=True)
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    log = logging.getLogger("app")
    n = 0
    while not stop.is_set():
        log.info("tick %d", n, extra={"worker": os.getpid()})
        n += 1
        time.sleep(interval)
    logging.shutdown()


if __name__ == "__main__":
    main()
