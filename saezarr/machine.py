"""Machine quantities: byte sizes for options and for people, the cores this process may use, free host memory."""

from __future__ import annotations

import os

from saezarr.errors import InputError


def human_bytes(n: float) -> str:
    """A byte count in B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_size(text: str, option: str = "size") -> int:
    """Parse a byte size such as `8GiB`, `512MB` or `1000000`."""
    units = {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tb": 10**12,
        "tib": 2**40,
    }
    number = text.strip().lower()
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = number[len(digits) :].strip()
    try:
        value = float(digits)
    except ValueError:
        value = -1
    if unit not in units or value <= 0:
        raise InputError(f"{option}: expected a size such as 8GiB or 500MB, got {text!r}")
    return int(value * units[unit])


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (as set by taskset or a batch scheduler), not the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity call on macOS and Windows
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Host memory available to new allocations (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
