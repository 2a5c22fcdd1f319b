"""The job store's rules, against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ocho.errors import InvalidRequest, JobConflict, JobNotFound, SettingsError
from ocho.gateway.schemas import JOB
from ocho.gateway.store import NOTICE_ROOM, Store
from tests.conftest import STORE_CAP

CAP = STORE_CAP


def new_id() -> str:
    return str(uuid.uuid4())


def started(job_id: str, attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {"type": "started", "id": job_id, "attempt": attempt, "worker": "w1", "ts": 100.0,
            "tool": None, **extra}


def output(job_id: str, offset: int, data: str, attempt: int = 1,
           stream: str = "stdout") -> dict[str, Any]:
    return {"type": "output", "id": job_id, "attempt": attempt, "stream": stream,
            "offset": offset, "data": data}


def finished(job_id: str, state: str = "succeeded", attempt: int = 1,
             **extra: Any) -> dict[str, Any]:
    event = {"type": "finished", "id": job_id, "attempt": attempt, "state": state,
             "exit_code": 0 if state == "succeeded" else 1, "ms": 42, "truncated": False,
             "output_bytes": 0, "reason": None, "tool": None, "ts": 101.0}
    event.update(extra)
    return event


def test_schema_creation_is_idempotent(store: Store, tmp_path: Path) -> None:
    job_id = new_id()
    store.create_job(job_id, "ls", ["-l"], timeout=30)
    store.migrate()
    assert store.get_job(job_id).args == ["-l"]


def test_a_submitted_job_is_queued_and_its_id_is_unique(store: Store) -> None:
    job_id = new_id()
    job = store.create_job(job_id, "ls", ["-l", "x y"], timeout=30, correlation_id="c-1")
    assert (job.state, job.attempt, job.tool, job.args) == ("queued", 0, "ls", ["-l", "x y"])
    assert JOB.dump(job)["created_at"].endswith("Z")
    assert JOB.dump(job)["correlation_id"] == "c-1"
    with pytest.raises(JobConflict):
        store.create_job(job_id, "ls", [], timeout=30)
    with pytest.raises(JobNotFound):
        store.get_job(new_id())


def test_a_full_run_moves_forward(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30)
    assert store.apply_event(started(job_id))
    job = store.get_job(job_id)
    assert (job.state, job.attempt, job.worker, job.started_at) == ("running", 1, "w1", 100.0)
    store.apply_event(output(job_id, 0, "hello\n"))
    assert store.apply_event(finished(job_id, output_bytes=6))
    job = store.get_job(job_id)
    assert (job.state, job.exit_code, job.ms, job.finished_at) == ("succeeded", 0, 42, 101.0)
    assert job.output_bytes == 6
    assert JOB.dump(job)["finished_at"] == "1970-01-01T00:01:41.000Z"


def test_late_and_duplicate_events_never_move_a_job_back(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30)
    store.apply_event(started(job_id))
    store.apply_event(finished(job_id, "failed", exit_code=3))
    assert not store.apply_event(started(job_id))  # duplicate started after the end
    assert not store.apply_event(finished(job_id, "succeeded"))  # first terminal state wins
    assert not store.apply_event(finished(job_id, "failed", exit_code=3))
    job = store.get_job(job_id)
    assert (job.state, job.exit_code) == ("failed", 3)


def test_finished_before_started(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30)
    store.apply_event(finished(job_id, "timed_out", exit_code=None))
    store.apply_event(started(job_id))
    job = store.get_job(job_id)
    assert (job.state, job.started_at, job.worker, job.finished_at) == (
        "timed_out", 100.0, "w1", 101.0)


def test_duplicate_output_and_output_after_finished(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30)
    store.apply_event(started(job_id))
    store.apply_event(output(job_id, 0, "one\n"))
    store.apply_event(output(job_id, 0, "one\n"))  # redelivered: harmless
    store.apply_event(finished(job_id))
    store.apply_event(output(job_id, 4, "two\n"))  # late, same attempt: still the job's output
    result = store.read_output(job_id)
    assert result.data == "one\ntwo\n"
    assert (result.next_offset, result.finished) == (8, True)


def test_output_waits_for_a_missing_chunk_while_running(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30)
    store.apply_event(started(job_id))
    store.apply_event(output(job_id, 0, "aaaa"))
    store.apply_event(output(job_id, 8, "cccc"))  # arrived before the chunk at 4
    assert (store.read_output(job_id).data, store.read_output(job_id).next_offset) == ("aaaa", 4)
    store.apply_event(output(job_id, 4, "bbbb"))
    assert store.read_output(job_id).data == "aaaabbbbcccc"


def test_offsets_are_utf8_bytes_and_paging_never_splits_a_character(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30)
    store.apply_event(started(job_id))
    text = "héllo wörld ☃\n"
    store.apply_event(output(job_id, 0, text))
    store.apply_event(output(job_id, len(text.encode()), "err\n", stream="stderr"))
    total = len(text.encode()) + 4
    whole = store.read_output(job_id)
    assert (whole.data, whole.next_offset, whole.finished) == (text + "err\n", total, False)
    assert [c.stream for c in whole.chunks] == ["stdout", "stderr"]
    assert store.read_output(job_id, 7).data == "wörld ☃\nerr\n"
    # Page through 3 bytes at a time: every page is valid text and nothing is lost.
    pages, offset = [], 0
    while offset < total:
        page = store.read_output(job_id, offset, limit=4)
        assert page.next_offset > offset
        pages.append(page.data)
        offset = page.next_offset
    assert "".join(pages) == text + "err\n"
    assert store.read_output(job_id, total).data == ""
    store.apply_event(finished(job_id))
    end = store.read_output(job_id, total)
    assert (end.data, end.next_offset, end.finished) == ("", total, True)


def test_a_page_that_ends_on_a_chunk_boundary_is_not_the_end(store: Store) -> None:
    """A page reads only the chunks it can hold, but still says when more follows."""
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30)
    store.apply_event(started(job_id))
    for index, letter in enumerate("abc"):
        store.apply_event(output(job_id, index * 4, letter * 4))
    store.apply_event(finished(job_id))
    pages, offset, finished_flags = [], 0, []
    while not finished_flags or not finished_flags[-1]:
        page = store.read_output(job_id, offset, limit=4)
        pages.append(page.data)
        finished_flags.append(page.finished)
        offset = page.next_offset
    assert pages == ["aaaa", "bbbb", "cccc"]
    assert finished_flags == [False, False, True]
    middle = store.read_output(job_id, 2, limit=6)  # from inside one chunk, across the next
    assert (middle.data, middle.next_offset, middle.finished) == ("aabbbb", 8, False)


def test_a_redelivered_attempt_replaces_the_output(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "deploy", [], timeout=30)
    store.apply_event(started(job_id, attempt=1))
    store.apply_event(output(job_id, 0, "first try\n", attempt=1))
    store.apply_event(started(job_id, attempt=2, worker="w2"))
    job = store.get_job(job_id)
    assert (job.attempt, job.state, job.worker) == (2, "running", "w2")
    assert store.read_output(job_id).data == ""
    store.apply_event(output(job_id, 0, "late from attempt 1\n", attempt=1))  # stale: ignored
    store.apply_event(finished(job_id, "failed", attempt=1))  # stale: ignored
    store.apply_event(output(job_id, 0, "second\n", attempt=2))
    store.apply_event(finished(job_id, attempt=2))
    job = store.get_job(job_id)
    assert (job.state, job.attempt) == ("succeeded", 2)
    assert store.read_output(job_id).data == "second\n"
    # A redelivery after the job ended does not rewrite its result.
    store.apply_event(started(job_id, attempt=3))
    store.apply_event(output(job_id, 0, "third\n", attempt=3))
    job = store.get_job(job_id)
    assert (job.state, job.attempt) == ("succeeded", 2)
    assert store.read_output(job_id).data == "second\n"


def test_output_is_capped_and_the_cap_is_reported(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "log", [], timeout=30)
    store.apply_event(started(job_id))
    line = "x" * 99 + "\n"
    for i in range(30):  # 3000 bytes > CAP
        store.apply_event(output(job_id, i * 100, line))
    store.apply_event(finished(job_id))
    job = store.get_job(job_id)
    assert job.truncated
    assert job.output_bytes == 3000
    result = store.read_output(job_id)
    assert result.data.startswith(line * 20)
    assert "[ocho] output truncated" in result.data
    assert len(result.data.encode()) < CAP + NOTICE_ROOM
    assert result.chunks[-1].stream == "ocho"
    assert result.finished


def test_the_workers_own_truncation_notice_is_kept(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "log", [], timeout=30)
    store.apply_event(started(job_id))
    store.apply_event(output(job_id, 0, "y" * CAP))
    store.apply_event(output(job_id, CAP, "[worker] output truncated\n", stream="ocho"))
    store.apply_event(finished(job_id, truncated=True, output_bytes=10 * CAP))
    job = store.get_job(job_id)
    assert (job.truncated, job.output_bytes) == (True, 10 * CAP)
    assert store.read_output(job_id).data.endswith("y[worker] output truncated\n")


def chunk(offset: int, data: str, stream: str = "stdout") -> dict[str, Any]:
    return {"stream": stream, "offset": offset, "data": data}


def test_a_short_job_is_recorded_from_its_finished_event_alone(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "ls", [], timeout=30)
    assert store.apply_event(finished(job_id, worker="w2", started_ts=100.5, output_bytes=9,
                                      output=[chunk(0, "out\n"), chunk(4, "err\n", "stderr")]))
    job = store.get_job(job_id)
    assert (job.state, job.worker, job.started_at, job.finished_at) == (
        "succeeded", "w2", 100.5, 101.0)
    assert (job.output_bytes, job.truncated) == (9, False)
    result = store.read_output(job_id)
    assert result.data == "out\nerr\n" and result.finished
    assert [c.stream for c in result.chunks] == ["stdout", "stderr"]
    # A replay changes nothing; a started event that arrives late neither.
    assert not store.apply_event(finished(job_id, output=[chunk(0, "out\n")]))
    assert not store.apply_event(started(job_id))
    assert store.read_output(job_id).data == "out\nerr\n"


def test_output_in_finished_follows_output_events_and_is_capped(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "log", [], timeout=30)
    store.apply_event(started(job_id))
    store.apply_event(output(job_id, 0, "a" * 2000))
    store.apply_event(finished(job_id, output_bytes=2200,
                               output=[chunk(2000, "b" * 100), chunk(2100, "c" * 100)]))
    job = store.get_job(job_id)
    assert (job.truncated, job.output_bytes, job.started_at) == (True, 2200, 100.0)
    data = store.read_output(job_id).data
    assert data.startswith("a" * 2000 + "b" * 48)
    assert data.count("[ocho] output truncated") == 1


def test_events_for_an_unknown_job_create_it(store: Store) -> None:
    job_id = new_id()
    store.apply_event(output(job_id, 0, "hi\n"))  # even before its started event
    job = store.get_job(job_id)
    assert (job.state, job.tool) == ("running", None)
    store.apply_event(started(job_id, tool="grep"))
    store.apply_event(finished(job_id, tool="grep"))
    job = store.get_job(job_id)
    assert (job.state, job.tool, job.args) == ("succeeded", "grep", [])
    assert store.read_output(job_id).data == "hi\n"


def test_reject_and_cancel(store: Store) -> None:
    queued, running, done, unknown = new_id(), new_id(), new_id(), new_id()
    for job_id in (queued, running, done):
        store.create_job(job_id, "ls", [], timeout=30)
    store.apply_event(started(running))
    store.apply_event(started(done))
    store.apply_event(finished(done))
    assert store.cancel_queued(queued).state == "cancelled"
    assert store.cancel_queued(running).state == "running"
    assert store.reject(running, "dead-lettered after 4 deliveries (delivery limit 3)")
    assert store.get_job(running).reason.startswith("dead-lettered")
    assert not store.reject(done, "too late")
    assert store.get_job(done).state == "succeeded"
    assert store.reject(unknown, "rejected by a worker", tool="ls", args=["-x"])
    assert (store.get_job(unknown).state, store.get_job(unknown).args) == ("rejected", ["-x"])
    # A worker that had already picked up the cancelled job reports a run: the state stays.
    store.apply_event(started(queued))
    store.apply_event(finished(queued, "succeeded"))
    assert store.get_job(queued).state == "cancelled"


def test_a_job_cancelled_as_queued_that_had_run_says_so(store: Store) -> None:
    ran, stopped = new_id(), new_id()
    for job_id in (ran, stopped):
        store.create_job(job_id, "deploy", [], timeout=30)
        assert store.cancel_queued(job_id).state == "cancelled"
    # Short jobs send no `started`: the store saw them queued when the cancel came.
    assert store.apply_event(finished(ran, worker="w3", started_ts=100.5, output_bytes=3,
                                      output=[chunk(0, "rc\n")]))
    job = store.get_job(ran)
    assert (job.state, job.worker, job.started_at, job.exit_code) == ("cancelled", "w3", 100.5, 0)
    assert job.reason.endswith("already started it; the tool ran to its end: succeeded, "
                               "exit code 0")
    assert store.read_output(ran).data == "rc\n"
    # Replays change nothing more.
    assert not store.apply_event(finished(ran, worker="w3", started_ts=100.5))
    store.apply_event(finished(stopped, "cancelled", worker="w3", started_ts=100.5,
                               reason="cancelled on request"))
    assert store.get_job(stopped).reason.endswith("it was stopped: cancelled on request")


def test_unpublished_jobs_are_removed_but_nothing_else(store: Store) -> None:
    gone, kept = new_id(), new_id()
    store.create_job(gone, "ls", [], timeout=30)
    store.create_job(kept, "ls", [], timeout=30)
    store.apply_event(started(kept))
    store.delete_unpublished(gone)
    store.delete_unpublished(kept)
    with pytest.raises(JobNotFound):
        store.get_job(gone)
    assert store.get_job(kept).state == "running"


def test_listing_filters_and_pages_newest_first(store: Store) -> None:
    ids = []
    for i in range(7):
        job_id = f"{i:08d}-0000-4000-8000-000000000000"
        ids.append(job_id)
        store.create_job(job_id, "ls" if i % 2 else "grep", [], timeout=30,
                         created_at=1000.0 + i // 2)  # pairs share a timestamp
    store.apply_event(started(ids[6]))
    newest_first = list(reversed(ids))
    page = store.list_jobs(limit=3)
    assert [j.id for j in page.jobs] == newest_first[:3]
    seen = [j.id for j in page.jobs]
    while page.next:
        page = store.list_jobs(limit=3, before=page.next)
        seen += [j.id for j in page.jobs]
    assert seen == newest_first
    assert [j.id for j in store.list_jobs(offset=5).jobs] == newest_first[5:]
    assert {j.tool for j in store.list_jobs(tool="ls").jobs} == {"ls"}
    assert [j.id for j in store.list_jobs(states=["running"]).jobs] == [ids[6]]
    assert len(store.list_jobs(states=["queued", "running"]).jobs) == 7
    with pytest.raises(InvalidRequest) as err:
        store.list_jobs(before=new_id())
    assert err.value.field == "before"


def test_a_batch_applies_in_one_transaction(store: Store) -> None:
    job_id = new_id()
    with store.transaction() as tx:
        tx.apply_event(started(job_id, tool="ls"))
        for i in range(50):
            tx.apply_event(output(job_id, i * 2, f"{i % 10}\n"))
        tx.apply_event(finished(job_id))
    assert store.read_output(job_id).data == "".join(f"{i % 10}\n" for i in range(50))


def test_text_with_nul_is_stored(store: Store) -> None:
    job_id = new_id()
    store.apply_event(started(job_id, tool="ls"))
    store.apply_event(output(job_id, 0, "a\0b"))
    store.apply_event(finished(job_id, "failed", reason="bad\0reason"))
    assert store.read_output(job_id).data == "a\0b"
    assert store.get_job(job_id).reason == "bad\N{REPLACEMENT CHARACTER}reason"


def test_many_threads_write_at_once(store: Store) -> None:
    job_ids = [new_id() for _ in range(8)]
    errors: list[BaseException] = []

    def run(job_id: str) -> None:
        try:
            store.create_job(job_id, "ls", [], timeout=30)
            store.apply_event(started(job_id))
            for i in range(20):
                store.apply_event(output(job_id, i, "z"))
            store.apply_event(finished(job_id))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job_id,)) for job_id in job_ids]
    started_at = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert time.monotonic() - started_at < 30
    for job_id in job_ids:
        assert store.read_output(job_id).data == "z" * 20


def test_a_bad_url_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="sqlite:///"):
        Store("mysql://nope", output_cap=CAP)


# -- job identity: a job belongs to one request (issue 11) -----------------------------------

MINE, THEIRS = "a" * 64, "b" * 64


def test_events_and_dead_letters_of_another_request_never_touch_a_job(store: Store) -> None:
    job_id = new_id()
    store.create_job(job_id, "sleep", ["2"], timeout=30, digest=MINE)
    assert store.apply_event(started(job_id, digest=MINE))
    before = store.get_job(job_id)
    # Another request reusing the id: its run, its result and its dead letter.
    assert not store.apply_event(started(job_id, attempt=6, digest=THEIRS, worker="w9"))
    out = output(job_id, 0, "forged\n")
    assert not store.apply_event({**out, "digest": THEIRS})
    assert not store.apply_event(finished(job_id, "succeeded", attempt=6, digest=THEIRS))
    assert not store.reject(job_id, "forged rejection", digest=THEIRS)
    assert store.get_job(job_id) == before
    assert store.read_output(job_id).data == ""
    # The job's own request still moves it on.
    assert store.apply_event(finished(job_id, "timed_out", digest=MINE))
    assert store.get_job(job_id).state == "timed_out"


def test_a_job_first_seen_over_amqp_belongs_to_the_first_request_recorded(store: Store) -> None:
    job_id = new_id()
    assert store.apply_event(finished(job_id, "succeeded", digest=MINE, tool="exit"))
    assert store.get_job(job_id).digest == MINE
    assert not store.apply_event(finished(job_id, "failed", attempt=2, digest=THEIRS))
    assert store.get_job(job_id).state == "succeeded"


def test_an_older_store_gets_the_digest_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, tool TEXT, args TEXT NOT NULL "
                     "DEFAULT '[]', state TEXT NOT NULL, exit_code INTEGER, attempt INTEGER NOT "
                     "NULL DEFAULT 0, correlation_id TEXT, created_at REAL NOT NULL, "
                     "started_at REAL, finished_at REAL, ms BIGINT, timeout INTEGER, truncated "
                     "INTEGER NOT NULL DEFAULT 0, output_bytes BIGINT NOT NULL DEFAULT 0, "
                     "reason TEXT, worker TEXT)")
        conn.execute("INSERT INTO jobs (id, state, created_at) VALUES ('old', 'succeeded', 1)")
    store = Store(f"sqlite:///{path}", output_cap=CAP)
    try:
        assert store.get_job("old").digest is None
        job_id = new_id()
        store.create_job(job_id, "exit", [], timeout=5, digest=MINE)
        assert store.get_job(job_id).digest == MINE
    finally:
        store.close()
