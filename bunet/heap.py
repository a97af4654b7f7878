"""Heap settings for processes that move large protocol messages (glibc only; a no-op elsewhere)."""

from __future__ import annotations


def tune_malloc() -> None:
    """Keep large buffers in the heap (glibc only; a no-op elsewhere).

    Protocol messages reach hundreds of MB (the first HomConv layers at 512x512). With glibc's
    defaults every such buffer is a fresh mmap, page-faulted in and unmapped again, and freed
    memory is trimmed back to the OS at once: moving one-way 100 MB messages over gRPC cost
    2.7-4.2 CPU s/GB at 0.33-0.49 GB/s, and 1.8 CPU s/GB at 0.75 GB/s with these settings
    (bench/transport.py --up-mb 100 --down-mb 50 --window 1). The price: up to 512 MB of freed
    memory may stay in the process.

    One arena: glibc gives each thread its own arena of at most 64 MB heaps, so a worker thread's
    larger buffer (HE messages, garbled chunks) was a fresh mmap every time whatever the threshold,
    faulted in and zeroed page by page (bench/e2e.py at 512x512: 0.97 M minor page faults, 0.39 M
    with one arena). The buffers are few and large, so sharing one arena's lock is cheap.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    mallopt(m_arena_max, 1)
    mallopt(m_mmap_threshold, 256 << 20)
    mallopt(m_trim_threshold, 512 << 20)
