"""The event-driven waits that replace pynetdicom's polling sleeps."""

import queue
import threading
import time

import pynetdicom

from network import reactor


def test_it_supports_the_pinned_pynetdicom():
    # If this fails after an upgrade, re-read pynetdicom's two reactor loops
    # before adding the new version to SUPPORTED_VERSIONS.
    assert pynetdicom.__version__ in reactor.SUPPORTED_VERSIONS


def test_waiting_for_a_message_ends_when_one_arrives():
    messages = queue.Queue()
    threading.Timer(0.05, messages.put, args=[("ctx", "msg")]).start()
    started = time.monotonic()
    reactor._wait_for_message(messages, 5)
    assert time.monotonic() - started < 2
    assert messages.qsize() == 1


def test_waiting_for_a_message_lasts_no_longer_than_the_sleep_it_replaces():
    started = time.monotonic()
    reactor._wait_for_message(queue.Queue(), 0.01)
    assert time.monotonic() - started < 1


class Loop:
    def __init__(self, clock=None):
        self.clock = clock

    def run(self):
        self.clock.sleep(0.001)


def test_the_clock_changes_sleep_only_for_the_loop_and_the_objects_registered():
    calls = []
    ours, also_ours, other = Loop(), Loop(), Loop()
    clock = reactor._Clock(Loop.run.__code__)
    clock.register(ours, lambda seconds: calls.append(("ours", seconds)))
    clock.register(also_ours, lambda seconds: calls.append(("also ours", seconds)))
    ours.clock = also_ours.clock = other.clock = clock
    ours.run()
    also_ours.run()  # a C-MOVE's outgoing association beside the one it serves
    other.run()  # an association that registered nothing sleeps as pynetdicom meant
    clock.sleep(0)  # and so does any other caller
    assert calls == [("ours", 0.001), ("also ours", 0.001)]
    assert clock.monotonic() > 0  # everything else is the real time module


def test_a_loop_woken_by_a_message_passes_the_wake_up_on_to_a_thread_waiting_for_it():
    # Queue.put wakes one waiter: if the loop's wait took that wake-up, a send_* call
    # blocked in get() would sleep until its DIMSE timeout.
    messages = queue.Queue()
    got = []
    loop_waiting = threading.Thread(target=reactor._wait_for_message, args=(messages, 10))
    loop_waiting.start()
    deadline = time.monotonic() + 5
    while not messages.not_empty._waiters and time.monotonic() < deadline:
        time.sleep(0.001)
    getter = threading.Thread(target=lambda: got.append(messages.get(timeout=10)))
    getter.start()
    while len(messages.not_empty._waiters) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    started = time.monotonic()
    messages.put(("ctx", "msg"))
    getter.join(5)
    loop_waiting.join(5)
    assert got == [("ctx", "msg")]
    assert time.monotonic() - started < 2


def _requested_association():
    from pynetdicom import AE
    from pynetdicom._globals import MODE_REQUESTOR
    from pynetdicom.association import Association

    return Association(AE(ae_title="TEST"), MODE_REQUESTOR)


def _store_response():
    from pynetdicom.dimse_primitives import C_STORE

    response = C_STORE()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    response.AffectedSOPInstanceUID = "1.2.3.4"
    response.Status = 0x0000
    return response


def test_a_response_the_loop_takes_while_a_send_is_under_way_goes_back_to_it():
    assoc = _requested_association()
    served = []
    assoc._serve_request = lambda msg, context_id: served.append(msg)
    reactor.keep_responses(assoc)
    response = _store_response()

    assoc._reactor_checkpoint.clear()  # send_c_store pausing the loop, or waiting for its response
    assoc._serve_request(response, 1)
    assert served == []
    assert assoc.dimse.msg_queue.get_nowait() == (1, response)

    assoc._reactor_checkpoint.set()  # no send under way: pynetdicom's own handling (it logs and drops it)
    assoc._serve_request(response, 1)
    assert served == [response] and assoc.dimse.msg_queue.empty()


def test_a_request_from_the_peer_is_served_as_before_while_a_send_is_under_way():
    from pynetdicom.dimse_primitives import C_ECHO

    assoc = _requested_association()
    served = []
    assoc._serve_request = lambda msg, context_id: served.append((msg, context_id))
    reactor.keep_responses(assoc)
    request = C_ECHO()
    request.MessageID = 3
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    assoc._reactor_checkpoint.clear()
    assoc._serve_request(request, 5)
    assert served == [(request, 5)] and assoc.dimse.msg_queue.empty()
