"""The standard ``process_*`` series for a service of several processes: a parent and its worker processes.

prometheus-client's own process collector describes the process that answers the scrape; with several
workers that would be whichever one the connection reached. This one reads Linux's ``/proc`` for each of
the service's processes and reports the service: memory, CPU time and open files summed, the start time the
parent's, the file limit this process's (inherited from the parent). CPU time includes what the parent's
finished children used (the kernel adds a reaped child's time to its parent's ``cutime``/``cstime``), so the
counter does not fall when a worker is replaced. Elsewhere (no ``/proc``) it reports nothing.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PROC = Path("/proc")
# Fields of /proc/<pid>/stat after the command name, counted from its state (field 3 of proc(5)) as 0.
UTIME, STIME, CUTIME, CSTIME, START, VSIZE, RSS = 11, 12, 13, 14, 19, 20, 21


class ServiceProcessCollector(Collector):
    """``pids()`` gives the parent's pid first, then the live workers'."""

    def __init__(self, pids: Callable[[], list[int]], proc: Path = PROC):
        self._pids, self._proc = pids, proc
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = resource.getpagesize()
        self._boot = self._boot_time()

    def collect(self) -> Iterator[Metric]:
        parent, *workers = self._pids()
        base = self._stat(parent)
        if base is None or self._boot is None:
            return
        cpu, virtual, resident, fds = base[CUTIME] + base[CSTIME], 0, 0, 0
        for pid, stat in ((pid, self._stat(pid)) for pid in (parent, *workers)):
            if stat is None:  # exited since the list was read
                continue
            cpu += stat[UTIME] + stat[STIME]
            virtual += stat[VSIZE]
            resident += stat[RSS] * self._page
            fds += self._open_fds(pid)
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.", value=virtual)
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.", value=resident)
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            value=self._boot + base[START] / self._ticks,
        )
        yield CounterMetricFamily(
            "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", value=cpu / self._ticks
        )
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=fds)
        yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=limit)

    def _stat(self, pid: int) -> list[int] | None:
        try:
            text = (self._proc / str(pid) / "stat").read_bytes()
        except OSError:
            return None
        # The command name is in parentheses and may hold spaces or parentheses itself: split after the last ")".
        return [int(field) if field.lstrip(b"-").isdigit() else 0 for field in text.rsplit(b")", 1)[1].split()]

    def _open_fds(self, pid: int) -> int:
        try:
            return len(os.listdir(self._proc / str(pid) / "fd"))
        except OSError:
            return 0

    def _boot_time(self) -> float | None:
        try:
            lines = (self._proc / "stat").read_bytes().splitlines()
        except OSError:
            return None
        return next((float(line.split()[1]) for line in lines if line.startswith(b"btime ")), None)
