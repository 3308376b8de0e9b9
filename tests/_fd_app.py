"""An app with the common soft limit of 1024 open files, for the descriptor tests.

``python tests/_fd_app.py`` lowers its soft ``RLIMIT_NOFILE`` to 1024, configures a
WebSocketHandler by dictConfig (port 0, key ``test-key``), prints one JSON line
``{"port": ...}``, and then, until its stdin closes, opens a file and a socket every
millisecond, as an app goes about its work. At the end it prints ``{"attempts": N,
"failures": [...]}``: the errors its own ``open()`` and ``socket()`` met.
"""

from __future__ import annotations

import json
import logging
import logging.config
import resource
import socket
import sys
import threading
import time


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    logging.config.dictConfig(
        {
            "version": 1,
            "handlers": {
                "live": {"class": "wslogging.WebSocketHandler", "port": 0, "api_keys": "test-key"}
            },
            "root": {"level": "INFO", "handlers": ["live"]},
        }
    )
    (handler,) = logging.getLogger().handlers
    print(json.dumps({"port": handler.port}), flush=True)  # type: ignore[attr-defined]
    attempts, failures = 0, []
    done = threading.Event()

    def work() -> None:
        nonlocal attempts
        while not done.is_set():
            attempts += 1
            try:
                with open(__file__, "rb"), socket.socket():
                    pass
            except OSError as exc:
                failures.append(repr(exc))
            time.sleep(0.001)

    worker = threading.Thread(target=work)
    worker.start()
    sys.stdin.read()
    done.set()
    worker.join()
    print(json.dumps({"attempts": attempts, "failures": failures[:10]}), flush=True)
    logging.shutdown()


if __name__ == "__main__":
    main()
