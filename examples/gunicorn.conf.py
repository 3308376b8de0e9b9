# gunicorn.conf.py: gunicorn's own messages, its access log and the app's records, from the
# master and every worker, on the console and in one live stream.
import os

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {
        "console": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        "live": {
            "class": "wslogging.WebSocketHandler",
            "port": int(os.environ.get("WSLOGGING_PORT", "3000")),
        },
    },
    "root": {"level": "INFO", "handlers": ["console", "live"]},
    # gunicorn merges this dict over its own defaults key by key: its loggers name
    # handlers of its "handlers", replaced above, so they are named here too. Both
    # propagate to the root's handlers ("propagate": False would turn them off).
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
    },
}
