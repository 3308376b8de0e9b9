"""A Flask app whose logging goes to wslogging, configured only through dictConfig.

Run it, open a few pages, and watch the records arrive::

    python examples/flask_app.py
    curl http://127.0.0.1:5000/orders/42
    curl -N -H "Authorization: Bearer $WSLOGGING_API_KEY" \\
        http://127.0.0.1:3000/api/get-logs-stream

The log stream's port is ``$WSLOGGING_PORT`` (default 3000), the app's ``$FLASK_RUN_PORT``
(default 5000). The key is ``$WSLOGGING_API_KEY``; without it, the handler makes one up and
prints it to stderr.
"""

from __future__ import annotations

import logging
import logging.config
import os
import secrets
import time

from flask import Flask, Response, g, request

PORT = int(os.environ.get("WSLOGGING_PORT", "3000"))
APP_PORT = int(os.environ.get("FLASK_RUN_PORT", "5000"))


class RequestContext(logging.Filter):
    """Adds ``request_id`` and ``path`` to records logged while serving a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if request:  # a LocalProxy is falsy outside a request
            record.request_id = g.get("request_id", "-")
            record.path = request.path
        return True


# As Flask's documentation advises: configure logging before the app is created.
logging.config.dictConfig(
    {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestContext}},
        "formatters": {
            "console": {"format": "%(asctime)s %(levelname)-8s %(name)s: %(message)s"},
        },
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "console"},
            "live": {
                "class": "wslogging.WebSocketHandler",
                "port": PORT,
                "filters": ["request"],
            },
        },
        "root": {"level": "INFO", "handlers": ["console", "live"]},
    }
)

app = Flask(__name__)
log = logging.getLogger("shop")

ORDERS = {42: {"item": "teapot", "user": "alice"}, 7: {"item": "kettle", "user": "bob"}}
PRICES = {"teapot": 30}  # no price for the kettle: /checkout fails, to show a traceback


@app.before_request
def start_timer() -> None:
    g.request_id = secrets.token_hex(4)
    g.started = time.perf_counter()


@app.after_request
def log_request(response: Response) -> Response:
    took = round((time.perf_counter() - g.started) * 1000, 2)
    log.info(
        "%s %s -> %d",
        request.method,
        request.path,
        response.status_code,
        extra={"status": response.status_code, "duration_ms": took, "category": "http"},
    )
    return response


@app.get("/")
def index() -> str:
    return "Try /orders/42, /orders/1 and /checkout\n"


@app.get("/orders/<int:order_id>")
def order(order_id: int) -> tuple[dict[str, object], int]:
    found = ORDERS.get(order_id)
    if found is None:
        log.warning("order %d not found", order_id, extra={"order_id": order_id})
        return {"error": "not found"}, 404
    log.info("order %d looked up", order_id, extra={"order_id": order_id, "user": found["user"]})
    return {"id": order_id, **found}, 200


@app.get("/checkout")
def checkout() -> tuple[dict[str, object], int]:
    try:
        total = sum(PRICES[o["item"]] for o in ORDERS.values())
    except KeyError:
        log.exception("checkout failed", extra={"category": "billing", "orders": len(ORDERS)})
        return {"error": "checkout failed"}, 500
    return {"total": total}, 200


if __name__ == "__main__":
    live = next(h for h in logging.getLogger().handlers if h.get_name() == "live")
    key = os.environ.get("WSLOGGING_API_KEY", "").split(",")[0].strip() or "KEY-FROM-ABOVE"
    print(
        f"App: http://127.0.0.1:{APP_PORT}/  Watch its logs:\n"
        f'  curl -N -H "Authorization: Bearer {key}" {live.url}/api/get-logs-stream',
        flush=True,
    )
    # No reloader here, to keep one process. `flask --app flask_app run --debug` has one:
    # its first process serves the log stream and the app process it starts (again after
    # every code change) forwards its records there, on the same stream.
    app.run(port=APP_PORT, use_reloader=False)
