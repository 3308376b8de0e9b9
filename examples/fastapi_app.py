"""A FastAPI app whose records, uvicorn's and its access log stream live through wslogging,
configured by uvicorn's ``--log-config`` (see ``uvicorn_log_config.yaml``)::

    export WSLOGGING_API_KEY=change-me
    uvicorn fastapi_app:app --app-dir examples --log-config examples/uvicorn_log_config.yaml
    curl http://127.0.0.1:8000/orders/42
    wslogging tail http://127.0.0.1:3000

``pip install fastapi uvicorn pyyaml`` first. With ``--reload`` or ``--workers N`` the
process uvicorn starts first serves the log port and the others forward to it (see
docs/processes.rst).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, HTTPException

log = logging.getLogger("shop.orders")
app = FastAPI()


@app.get("/orders/{number}")
async def order(number: int) -> dict[str, int]:
    """Log the lookup with the order as a field."""
    log.info("order looked up", extra={"order": number})
    return {"order": number}


@app.get("/broken")
async def broken() -> None:
    """Fail, as an app does: the traceback arrives in the record's ``exc``."""
    try:
        raise RuntimeError("the payment service is down")
    except RuntimeError:
        log.exception("payment failed")
    raise HTTPException(status_code=503, detail="try again later")
