"""A fork whose child is the caller's sibling: clone(CLONE_PARENT), done as os.fork
does fork(), for the tool zygote (ocho.worker.zygote_process).

Why: the worker must be a warm tool's parent (it waits for it and reads its exit
status, as with Popen). Without this the zygote forks twice and the middle process
exits so that the worker adopts the tool; that middle process costs a second fork
and a second teardown of the zygote's address space, about a third of a trivial
warm job's CPU. With CLONE_PARENT the zygote's one fork makes the worker (the
zygote's parent) the tool's parent at once.

Invariants:
- the clone runs between PyOS_BeforeFork and PyOS_AfterFork_Child/Parent, with the
  GIL held throughout, exactly as os.fork runs fork(): the interpreter's locks, its
  thread state and every os.register_at_fork hook behave as after os.fork;
- glibc caches a thread's kernel tid in its thread descriptor, and a raw clone does
  not update it: the child's cached tid is written by the kernel
  (CLONE_CHILD_SETTID at that field), so glibc sees the child as itself;
- the field is found at start, and proven, not assumed: it is the one word of the
  descriptor holding the thread's tid whose change pthread_getcpuclockid() reports.
  Where that cannot be proven (another libc, another layout, an architecture not
  listed: x86_64 only for now) `make()` returns None and the zygote forks twice,
  as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Callable

CLONE_PARENT = 0x00008000
CLONE_CHILD_SETTID = 0x01000000
# The clone syscall's number, and where its child_tid argument goes: x86_64 only,
# the one architecture this was proven on (others order clone's arguments
# differently; they fork twice).
CLONE_SYSCALLS = {"x86_64": (56, 3)}
# How far into glibc's thread descriptor its tid may be (x86_64: 0x2d0).
DESCRIPTOR_SCAN_BYTES = 4096
# glibc's thread CPU clock ids encode the tid it caches (make_thread_cpuclock).
CPUCLOCK_SHIFT = 3


def make() -> Callable[[], int] | None:
    """A fork() returning 0 in the child and its pid in the caller, the child being
    the caller's parent's; None where it cannot be done safely (fork twice then)."""
    machine = CLONE_SYSCALLS.get(os.uname().machine)
    if machine is None or threading.active_count() != 1:
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: calls keep the GIL
        libc.syscall.restype = ctypes.c_long
        libc.pthread_self.restype = ctypes.c_void_p
        tid_field = _cached_tid_field(libc)
    except (OSError, AttributeError):
        return None
    if tid_field is None:
        return None
    number, child_tid_at = machine
    args: list[object] = [ctypes.c_long(CLONE_PARENT | CLONE_CHILD_SETTID | signal.SIGCHLD),
                          ctypes.c_long(0), ctypes.c_void_p(None), ctypes.c_void_p(None)]
    args.insert(child_tid_at, ctypes.c_void_p(tid_field))
    return _forker(libc, ctypes.c_long(number), args[:5])


def _forker(libc: ctypes.CDLL, number: ctypes.c_long, args: list[object]) -> Callable[[], int]:
    python = ctypes.pythonapi

    def fork() -> int:
        python.PyOS_BeforeFork()
        pid = libc.syscall(number, *args)
        if pid == 0:
            python.PyOS_AfterFork_Child()
            return 0
        error = ctypes.get_errno()
        python.PyOS_AfterFork_Parent()
        if pid < 0:
            raise OSError(error, os.strerror(error))
        return int(pid)

    return fork


def _cached_tid_field(libc: ctypes.CDLL) -> int | None:
    """The address of the calling thread's cached tid in glibc's descriptor, or None."""
    descriptor = libc.pthread_self()
    tid = threading.get_native_id()  # the gettid syscall, not the cache
    if not descriptor or _glibc_tid(libc, descriptor) != tid:
        return None
    found = [address for address in range(descriptor, descriptor + DESCRIPTOR_SCAN_BYTES, 4)
             if ctypes.c_int.from_address(address).value == tid
             and _is_tid_field(libc, descriptor, address, tid)]
    return found[0] if len(found) == 1 else None


def _is_tid_field(libc: ctypes.CDLL, descriptor: int, address: int, tid: int) -> bool:
    """Whether glibc reads the tid from `address`: change it a moment and ask."""
    word = ctypes.c_int.from_address(address)
    try:
        word.value = tid + 1
        return _glibc_tid(libc, descriptor) == tid + 1
    finally:
        word.value = tid


def _glibc_tid(libc: ctypes.CDLL, descriptor: int) -> int | None:
    clock = ctypes.c_int()
    if libc.pthread_getcpuclockid(ctypes.c_void_p(descriptor), ctypes.byref(clock)) != 0:
        return None
    return ~(clock.value >> CPUCLOCK_SHIFT)
