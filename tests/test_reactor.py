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


def test_the_clock_changes_sleep_only_for_the_loop_it_was_made_for():
    calls = []

    def loop():
        clock.sleep(0.001)

    clock = reactor._Clock(loop.__code__, calls.append)
    loop()
    clock.sleep(0)  # any other caller sleeps as usual
    assert calls == [0.001]
    assert clock.monotonic() > 0  # everything else is the real time module
