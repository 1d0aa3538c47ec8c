"""Measurement helpers shared by the benchmarks: /proc readings, statistics, tables.

Everything here reads Linux's ``/proc``; nothing is sampled by polling inside the
measured process, so the numbers are the kernel's own.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path


def proc_status(pid: int | str = "self", task: str | None = None) -> dict[str, str]:
    """``/proc/PID/status`` (or one thread's, ``/proc/PID/task/TID/status``) as a dict."""
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _kb(value: str) -> float:
    """``'12345 kB'`` -> MB."""
    return int(value.split()[0]) / 1024


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size now (VmRSS), in MiB."""
    return _kb(proc_status(pid)["VmRSS"])


def peak_rss_mb(pid: int | str = "self") -> float:
    """Highest resident set size the process has had (VmHWM), in MiB."""
    return _kb(proc_status(pid)["VmHWM"])


def context_switches(pid: int | str) -> int:
    """Voluntary + involuntary context switches, summed over every thread of ``pid``.

    ``/proc/PID/status`` alone counts only the main thread; Node.js wakes its worker
    threads too, so each task is read.  Threads that exit between the listing and the
    read are skipped (their switches are lost, which only makes a figure smaller).
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            st = proc_status(pid, tid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
    return total


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of the whole process (all threads) so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_count(pid: int | str) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linear between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    k = (len(data) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        mem = f"{_kb(proc_status_file('/proc/meminfo')['MemTotal']) / 1024:.1f} GiB"
    except (OSError, KeyError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def proc_status_file(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def command_version(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def table(rows: Sequence[Sequence[object]], header: Sequence[str], markdown: bool = False) -> str:
    """A plain-text (aligned) or Markdown table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
