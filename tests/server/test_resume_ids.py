"""/api/stream's resume accepts only the event ids the server hands out,
``<stream id>.<decimal digits>`` naming an event already sent (issue 18, item 7):
``<id>.-3`` used to replay from the end (duplicates, out of order) and ``<id>.1_0``
read as 10."""

from __future__ import annotations

import httpx
import pytest

from server.errors import APIError
from server.resume import StreamStore
from server_harness import StepEngine, iter_sse, serve  # noqa: F401  (serve: a fixture)

SID = "0123456789abcdef"
FORGED = ["-3", "1_0", "+1", " 1", "1.0", "0x1", "1e1", "\u0661", "", "a", "9" * 19]


@pytest.mark.parametrize("seq", FORGED)
def test_a_malformed_sequence_number_is_400(seq):
    store = StreamStore()
    store.streams[SID] = stream = object()
    assert store.lookup(f"{SID}.4") == (stream, 4)
    with pytest.raises(APIError) as info:
        store.lookup(f"{SID}.{seq}")
    assert (info.value.status, info.value.param) == (400, "Last-Event-ID")


@pytest.mark.parametrize("event_id", ["", "nodot", f"{SID}", f".{SID}", "x.1", f"{SID}.1.2", f"{SID.upper()}.1"])
def test_a_malformed_id_is_400(event_id):
    with pytest.raises(APIError) as info:
        StreamStore().lookup(event_id)
    assert info.value.status == 400


def test_an_unknown_stream_of_the_right_shape_is_still_404():
    assert StreamStore().lookup(f"{SID}.2") == (None, 2)


def test_forged_ids_over_http_are_400_and_real_ones_resume(serve, tiny_engine):
    server = serve(StepEngine(tiny_engine, delay_s=0.03))
    params = {"prompt": "Once upon", "strategy": "greedy", "max_tokens": "12", "ignore_eos": "true"}
    with httpx.stream("GET", server.url + "/api/stream", params=params, timeout=30) as res:
        first = [e for e in iter_sse(res) if "event" in e][:3]
    stream_id = first[0]["id"].rsplit(".", 1)[0]
    for forged in [f"{stream_id}.-3", f"{stream_id}.1_0", f"{stream_id}.+1", f"{stream_id}.999", stream_id]:
        for how in ({"headers": {"Last-Event-ID": forged}}, {"params": {"last_event_id": forged}}):
            res = httpx.get(server.url + "/api/stream", timeout=30, **how)
            assert res.status_code == 400, (forged, res.text)
            err = res.json()["error"]
            assert err["param"] == "Last-Event-ID" and err["type"] == "invalid_request_error"
    with httpx.stream("GET", server.url + "/api/stream", headers={"Last-Event-ID": first[1]["id"]},
                      timeout=30) as res:
        rest = [e for e in iter_sse(res) if "event" in e]
    seqs = [int(e["id"].rsplit(".", 1)[1]) for e in rest]
    assert seqs == list(range(2, 13)) and rest[-1]["event"] == "done"
