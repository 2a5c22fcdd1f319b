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
- all signals are blocked from before the clone until the interpreter's after-fork
  work is done, so no Python signal handler runs in the child before
  PyOS_AfterFork_Child has reset the pending signals (os.fork's C code runs none);
- the child's thread state is glibc's fork child's (what _Fork/arch_fork does): the
  kernel writes its tid into glibc's cached tid field and clears it at exit
  (CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID), and the child registers the robust
  futex list again (the kernel clears it on clone);
- only a process with one thread (counted by the kernel, so native threads count
  too) may use it: a raw clone runs no pthread_atfork handler;
- the field is found at start, and proven, not assumed: it is the one word of the
  descriptor holding the thread's tid whose change pthread_getcpuclockid() reports.
  Where that cannot be proven (another libc, another layout, an architecture not
  listed: x86_64 only for now) `make()` returns None and the zygote forks twice,
  as before.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable

CLONE_PARENT = 0x00008000
CLONE_CHILD_CLEARTID = 0x00200000
CLONE_CHILD_SETTID = 0x01000000
# x86_64 only, the one architecture this was proven on (others order clone's
# arguments differently; they fork twice): clone(flags, stack, parent_tid,
# child_tid, tls), set_robust_list(head, size), get_robust_list(pid, *head, *size).
SYS_CLONE, SYS_SET_ROBUST_LIST, SYS_GET_ROBUST_LIST = 56, 273, 274
MACHINES = ("x86_64",)
# glibc's thread descriptor size, for libthread_db; the scan stays within it.
DESCRIPTOR_SIZE_SYMBOL = "_thread_db_sizeof_pthread"
# glibc's thread CPU clock ids encode the tid it caches (make_thread_cpuclock).
CPUCLOCK_SHIFT = 3


def make() -> Callable[[], int] | None:
    """A fork() returning 0 in the child and its pid in the caller, the child being
    the caller's parent's; None where it cannot be done safely (fork twice then)."""
    if os.uname().machine not in MACHINES or len(os.listdir("/proc/self/task")) != 1:
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: calls keep the GIL
        libc.syscall.restype = ctypes.c_long
        libc.pthread_self.restype = ctypes.c_void_p
        tid_field = _cached_tid_field(libc)
        robust_list = _robust_list(libc)
    except (OSError, AttributeError, ValueError):
        return None
    if tid_field is None or robust_list is None:
        return None
    flags = CLONE_PARENT | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | signal.SIGCHLD
    clone = (ctypes.c_long(SYS_CLONE), ctypes.c_long(flags), ctypes.c_long(0),
             ctypes.c_void_p(None), ctypes.c_void_p(tid_field), ctypes.c_void_p(None))
    register = (ctypes.c_long(SYS_SET_ROBUST_LIST), *robust_list)
    return functools.partial(_fork, libc, clone, register)


def _fork(libc: ctypes.CDLL, clone: tuple[object, ...], register: tuple[object, ...]) -> int:
    python = ctypes.pythonapi
    sys.audit("os.fork")  # as os.fork raises it
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        python.PyOS_BeforeFork()
        pid = libc.syscall(*clone)
        if pid == 0:
            libc.syscall(*register)
            python.PyOS_AfterFork_Child()
            return 0
        error = ctypes.get_errno()
        python.PyOS_AfterFork_Parent()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if pid < 0:  # e.g. EINVAL: CLONE_PARENT refused to a namespace's init
        raise OSError(error, os.strerror(error))
    return int(pid)


def _robust_list(libc: ctypes.CDLL) -> tuple[ctypes.c_void_p, ctypes.c_size_t] | None:
    """This thread's robust futex list as glibc registered it, to register again."""
    head, size = ctypes.c_void_p(), ctypes.c_size_t()
    if libc.syscall(ctypes.c_long(SYS_GET_ROBUST_LIST), ctypes.c_long(0), ctypes.byref(head),
                    ctypes.byref(size)) != 0 or not head.value:
        return None
    return ctypes.c_void_p(head.value), ctypes.c_size_t(size.value)


def _cached_tid_field(libc: ctypes.CDLL) -> int | None:
    """The address of the calling thread's cached tid in glibc's descriptor, or None."""
    descriptor = libc.pthread_self()
    tid = threading.get_native_id()  # the gettid syscall, not the cache
    if not descriptor or _glibc_tid(libc, descriptor) != tid:
        return None
    size = ctypes.c_uint.in_dll(libc, DESCRIPTOR_SIZE_SYMBOL).value
    found = [address for address in range(descriptor, descriptor + size - 3, 4)
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
