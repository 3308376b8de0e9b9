"""One view that logs with a field, one that fails."""

import logging

from django.http import HttpRequest, HttpResponse
from django.urls import path

log = logging.getLogger("shop.orders")


def order(request: HttpRequest, number: int) -> HttpResponse:
    log.info("order looked up", extra={"order": number})
    return HttpResponse(f"order {number}\n")


def broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the payment service is down")


urlpatterns = [
    path("orders/<int:number>", order),
    path("broken", broken),
]
