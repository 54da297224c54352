"""localstripe, the Stripe stand-in the billing tests run against over HTTP, with the four
things it lacks for one-off invoices added the way real Stripe behaves:

- POST /v1/invoices for a customer without a subscription: localstripe only invoices
  subscriptions (it answers 404 "No upcoming invoices"); Stripe creates a draft, empty with
  `pending_invoice_items_behavior=exclude`, holding the customer's pending items with `include`.
- POST /v1/invoiceitems with `invoice`: localstripe records the id but never adds the item to
  that invoice; Stripe adds it to the draft.
- POST /v1/invoices/{id}/finalize: missing; Stripe moves a draft to open.
- POST /v1/invoices/{id}/pay with `paid_out_of_band=true`: localstripe's pay takes no
  parameters; Stripe marks the open invoice paid without charging.

Usage: python localstripe_server.py --port N --from-scratch
"""

from __future__ import annotations

import time
from typing import Any

from localstripe import resources
from localstripe.errors import UserError

# The state lives as long as the process: no pickle in /tmp shared with other runs.
resources.Store.dump_to_disk = lambda self: None  # type: ignore[method-assign]

_subscription_invoice_create = resources.Invoice._api_create.__func__  # type: ignore[attr-defined]
_invoice_item_create_unattached = resources.InvoiceItem._api_create.__func__  # type: ignore[attr-defined]
_pay = resources.Invoice._api_pay_invoice
_status = resources.Invoice.status


def _invoice_create(
    cls: Any, customer: str | None = None, subscription: str | None = None, **data: Any
) -> Any:
    if subscription is not None or customer is None:
        return _subscription_invoice_create(cls, customer=customer, subscription=subscription, **data)
    if resources.Customer._api_retrieve(customer).subscriptions._list:
        return _subscription_invoice_create(cls, customer=customer, **data)
    behavior = data.pop("pending_invoice_items_behavior", "exclude")
    auto_advance = data.pop("auto_advance", "true") in ("true", True)
    collection_method = data.pop("collection_method", "charge_automatically")
    currency = data.pop("currency", None)
    description, metadata = data.pop("description", None), data.pop("metadata", None)
    if data or behavior not in ("include", "exclude"):
        raise UserError(400, "Unexpected " + ", ".join(data or ["pending_invoice_items_behavior"]))
    # localstripe's constructor always takes the pending items; "exclude" hands them back.
    invoice = cls(customer=customer, description=description, metadata=metadata)
    if behavior == "exclude":
        for line in invoice.lines._list:
            resources.InvoiceItem._api_retrieve(line.invoice_item).invoice = None
        invoice.lines._list = []
    if currency is not None:
        if invoice.lines._list and currency != invoice.currency:
            raise UserError(400, "The invoice items are in another currency")
        invoice.currency = currency
    invoice.auto_advance = auto_advance
    invoice.collection_method = collection_method
    return invoice


def _invoice_item_create(cls: Any, **data: Any) -> Any:
    item = _invoice_item_create_unattached(cls, **data)
    if item.invoice is not None:
        invoice = resources.Invoice._api_retrieve(item.invoice)
        if invoice.status != "draft":
            raise UserError(400, "Items can only be added to a draft invoice")
        if item.currency != invoice.currency:
            raise UserError(400, "The item is in another currency than the invoice")
        invoice.lines._list.append(resources.InvoiceLineItem(item))
    return item


def _finalize(id: str, auto_advance: Any = None, **data: Any) -> Any:
    invoice = resources.Invoice._api_retrieve(id)
    if invoice.status != "draft":
        raise UserError(400, "This invoice is already finalized")
    invoice._finalize()
    if auto_advance is not None:
        invoice.auto_advance = auto_advance in ("true", True)
    return invoice


def _pay_invoice(id: str, paid_out_of_band: Any = None, **data: Any) -> Any:
    if paid_out_of_band not in ("true", True):
        return _pay(id, **data)
    invoice = resources.Invoice._api_retrieve(id)
    if invoice.status != "open":
        raise UserError(400, "Only an open invoice can be paid out of band")
    invoice._paid_out_of_band = True
    invoice.status_transitions["paid_at"] = int(time.time())
    return invoice


resources.Invoice._api_create = classmethod(_invoice_create)  # type: ignore[method-assign, assignment]
resources.InvoiceItem._api_create = classmethod(_invoice_item_create)  # type: ignore[method-assign, assignment]
resources.Invoice.status = property(  # type: ignore[method-assign, assignment]
    lambda self: "paid" if getattr(self, "_paid_out_of_band", False) else _status.fget(self)
)
# The server registers extra_apis when it is imported, so the list is amended first.
resources.extra_apis[:] = [
    (method, url, _pay_invoice if url == "/v1/invoices/{id}/pay" else func)
    for method, url, func in resources.extra_apis
]
resources.extra_apis.append(("POST", "/v1/invoices/{id}/finalize", _finalize))

from localstripe import server  # noqa: E402

if __name__ == "__main__":
    server.start()
