"""The store's side of several gateways: jobs recorded `submitting` until the broker
confirmed them, claims of the ones a dead gateway left, change notifications between
gateways, and a pool that survives a lost connection. Real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from ocho.errors import JobConflict
from ocho.gateway.store import Store
from tests.conftest import STORE_CAP

CAP = STORE_CAP


def submit(store: Store, job_id: str, digest: str = "d1") -> tuple[object, bool]:
    return store.record_submission(job_id, "ls", ["-l"], timeout=30, correlation_id=None,
                                   request=b'{"id": "%s"}' % job_id.encode(), digest=digest)


def finished(job_id: str) -> dict[str, object]:
    return {"type": "finished", "id": job_id, "attempt": 1, "state": "succeeded",
            "exit_code": 0, "ms": 1, "truncated": False, "output_bytes": 0, "reason": None,
            "tool": None, "ts": 101.0}


def test_a_submission_is_submitting_until_confirmed(store: Store) -> None:
    job_id = str(uuid.uuid4())
    job, created = submit(store, job_id)
    assert created and job.state == "submitting"
    assert store.count_by_state()["submitting"] == 1
    assert store.confirm_published(job_id).state == "queued"
    assert store.count_by_state()["submitting"] == 0
    assert store.count_by_state()["queued"] == 1
    # Confirmed: nothing left to claim, however old.
    assert store.claim_unconfirmed(time.time() + 60) is None


def test_a_retry_gets_the_job_and_another_request_is_a_conflict(store: Store) -> None:
    job_id = str(uuid.uuid4())
    submit(store, job_id)
    job, created = submit(store, job_id)
    assert not created and job.state == "submitting"
    with pytest.raises(JobConflict, match="different request"):
        submit(store, job_id, digest="other")
    # A job the store learnt of from events has no request to compare with.
    unknown = str(uuid.uuid4())
    store.apply_event(finished(unknown))
    with pytest.raises(JobConflict, match="not submitted through this API"):
        submit(store, unknown)


def test_events_before_the_confirm_move_the_job_on_and_the_confirm_keeps_them(
        store: Store) -> None:
    job_id = str(uuid.uuid4())
    submit(store, job_id)
    store.apply_event(finished(job_id))
    assert store.confirm_published(job_id).state == "succeeded"
    assert store.count_by_state()["succeeded"] == 1
    assert store.count_by_state()["submitting"] == store.count_by_state()["queued"] == 0
    cancelled = str(uuid.uuid4())
    submit(store, cancelled)
    assert store.cancel_queued(cancelled).state == "cancelled"
    assert store.confirm_published(cancelled).state == "cancelled"


def test_a_left_over_submission_is_claimed_once_until_it_is_old_again(store: Store) -> None:
    job_id = str(uuid.uuid4())
    submit(store, job_id)
    assert store.claim_unconfirmed(time.time() - 60) is None  # young: its gateway may live
    claimed = store.claim_unconfirmed(time.time() + 1)
    assert claimed is not None and claimed.id == job_id
    assert claimed.request == b'{"id": "%s"}' % job_id.encode()
    assert store.claim_unconfirmed(claimed.created_at) is None  # claimed just now
    assert store.claim_unconfirmed(time.time() + 1, job_id).id == job_id
    store.delete_unpublished(job_id)
    assert store.count_by_state()["submitting"] == 0


def test_gateways_claiming_together_never_take_the_same_job(pg_url: str) -> None:
    stores = [Store(pg_url, output_cap=CAP, pool_size=2) for _ in range(4)]
    ids = {str(uuid.uuid4()) for _ in range(40)}
    for job_id in ids:
        submit(stores[0], job_id)
    claimed: list[str] = []
    lock = threading.Lock()
    time.sleep(0.01)
    stale = time.time()  # after every submission, before every claim

    def claim_all(store: Store) -> None:
        while (job := store.claim_unconfirmed(stale)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for store in stores:
        store.close()
    assert sorted(claimed) == sorted(ids)


def test_another_gateways_change_is_heard_with_its_job_id(pg_url: str) -> None:
    writer, reader = (Store(pg_url, output_cap=CAP, pool_size=2) for _ in range(2))
    heard: list[str] = []
    gaps = threading.Event()
    listener = reader.listen(heard.extend, gaps.set)
    assert listener is not None
    try:
        assert gaps.wait(10)  # listening: waiters re-read once
        mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
        submit(reader, mine)  # its own change is not news to it
        began = time.monotonic()
        submit(writer, theirs)
        while theirs not in heard and time.monotonic() - began < 5:
            time.sleep(0.005)
        assert theirs in heard and time.monotonic() - began < 1
        assert mine not in heard
    finally:
        listener.stop()
        writer.close()
        reader.close()


def test_sqlite_has_no_listener(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'one.sqlite3'}", output_cap=CAP)
    assert store.listen(lambda ids: None, lambda: None) is None
    store.close()


def test_pooled_connections_the_server_dropped_are_replaced(pg_url: str) -> None:
    store = Store(pg_url, output_cap=CAP, pool_size=4)
    job_id = str(uuid.uuid4())
    submit(store, job_id)
    held = [store._pool.acquire() for _ in range(4)]  # four idle connections
    for conn in held:
        store._pool.release(conn, broken=False)
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
    for _ in range(8):
        assert store.get_job(job_id).state == "submitting"
    store.close()
