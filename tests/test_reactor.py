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


def test_the_clock_changes_sleep_only_for_the_loop_and_the_object_it_was_made_for():
    calls = []
    ours, other = Loop(), Loop()
    clock = reactor._Clock(Loop.run.__code__, ours, calls.append)
    ours.clock = other.clock = clock
    ours.run()
    other.run()  # another association's loop sleeps as pynetdicom meant
    clock.sleep(0)  # and so does any other caller
    assert calls == [0.001]
    assert clock.monotonic() > 0  # everything else is the real time module
