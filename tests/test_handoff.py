"""The SCP's hand-off of stored paths to the indexer, without a broker."""

import os
import threading

from network.handoff import IndexHandoff


def test_it_sends_paths_in_batches_grouped_by_calling_ae():
    sent = []
    handoff = IndexHandoff(send=lambda paths, ae: sent.append((ae, list(paths))))
    for i in range(10):
        handoff.submit(f"instances/{i}.dcm", "CT1" if i % 2 else "MR1")
    assert handoff.flush(5)
    assert sorted(p for ae, paths in sent if ae == "CT1" for p in paths) == [
        f"instances/{i}.dcm" for i in (1, 3, 5, 7, 9)
    ]
    assert sorted(p for ae, paths in sent if ae == "MR1" for p in paths) == [
        f"instances/{i}.dcm" for i in (0, 2, 4, 6, 8)
    ]
    assert len(sent) < 10, "paths submitted together travel together"
    assert handoff.sent == 10 and handoff.lost == 0


def test_a_failing_broker_loses_no_file_only_the_message_and_says_so(caplog):
    def refuse(paths, ae):
        raise ConnectionError("broker down")

    spooled = []
    handoff = IndexHandoff(send=refuse, spool_append=lambda paths, ae: spooled.extend(paths) or "the spool")
    handoff.submit("instances/a.dcm", "CT1")
    handoff.submit("instances/b.dcm", "CT1")
    assert handoff.flush(5)
    assert handoff.lost == 2 and handoff.spooled == 2
    assert spooled == ["instances/a.dcm", "instances/b.dcm"]
    assert "manage.py reindex" in caplog.text


def test_a_spool_that_cannot_be_written_is_logged_too(caplog):
    def refuse(paths, ae):
        raise ConnectionError("broker down")

    def full_disk(paths, ae):
        raise OSError(28, "No space left on device")

    handoff = IndexHandoff(send=refuse, spool_append=full_disk)
    handoff.submit("instances/a.dcm", "CT1")
    assert handoff.flush(5)
    assert handoff.spooled == 0
    assert "nor spool them" in caplog.text and "manage.py reindex" in caplog.text


def test_flush_reports_a_send_that_hangs():
    release = threading.Event()
    handoff = IndexHandoff(send=lambda paths, ae: release.wait(10))
    handoff.submit("instances/a.dcm", "CT1")
    assert handoff.flush(0.3) is False
    release.set()


class CountingCondition(threading.Condition):
    def __init__(self):
        super().__init__(threading.Lock())
        self.notified = 0

    def notify(self, n=1):
        self.notified += 1
        super().notify(n)


def test_a_full_batch_goes_at_once_and_only_a_batchs_first_and_last_path_wake_the_thread(settings):
    settings.INDEX_HANDOFF_LINGER_MS = 60_000  # nothing goes for lingering: only for being full, or at flush
    settings.INDEX_HANDOFF_MAX_PATHS = 4
    sent = []
    done = threading.Event()
    handoff = IndexHandoff(send=lambda paths, ae: (sent.append(list(paths)), len(sent) == 2 and done.set()))
    handoff._cond, handoff._pid = CountingCondition(), os.getpid()  # as the first submit would make it
    for i in range(10):
        handoff.submit(f"instances/{i}.dcm", "CT1")
    assert done.wait(10), "two full batches went without waiting for the linger"
    assert sent == [[f"instances/{i}.dcm" for i in range(4)], [f"instances/{i}.dcm" for i in range(4, 8)]]
    # Path 0 began a batch and 3 filled it; 4 and 7, 8 only if the thread had taken the first: not a wake per path.
    assert 2 <= handoff._cond.notified <= 5
    assert handoff.flush(5)
    assert sent[2:] == [["instances/8.dcm", "instances/9.dcm"]]
