from __future__ import annotations

import logging

from django.http import HttpResponse

from common import after_response


def test_deferred_work_runs_when_the_server_closes_the_response() -> None:
    ran: list[str] = []
    token = after_response.collect()
    after_response.after_response(lambda: ran.append("settled"))
    response = HttpResponse("body")
    after_response.attach(token, response)
    assert ran == []
    response.close()
    assert ran == ["settled"]


def test_outside_a_request_the_work_runs_at_once() -> None:
    ran: list[str] = []
    after_response.after_response(lambda: ran.append("now"))
    assert ran == ["now"]


def test_failing_deferred_work_is_logged_and_the_rest_still_runs(caplog) -> None:
    ran: list[str] = []
    token = after_response.collect()
    after_response.after_response(lambda: 1 / 0)
    after_response.after_response(lambda: ran.append("second"))
    response = HttpResponse("body")
    after_response.attach(token, response)
    with caplog.at_level(logging.ERROR):
        response.close()
    assert ran == ["second"]
    assert "Deferred work after the response failed" in caplog.text
