"""The CPUs this process may use: what sizes the publishing worker's image threads and its
default concurrency.

`os.cpu_count()` counts the machine's CPUs. A process pinned to some of them (`taskset`,
systemd's `CPUAffinity=`, a container's cpuset) or capped by a CPU quota (cgroup v2
`cpu.max`, v1 `cpu.cfs_quota_us`: Docker's `--cpus`, a Kubernetes limit) may use fewer; CPU-bound
threads beyond those only wait for a CPU, and under a quota the whole process is throttled
(heartbeats included). So the count is the affinity's, lowered to the quota rounded down (at
least 1), as Go's automaxprocs does.

The parsing is pure (`quota_cpus` takes the texts of `/proc/self/cgroup` and
`/proc/self/mountinfo` and a reader of the controller's files); `usable_cpus` reads this
process's own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import PurePosixPath

__all__ = ["parse_cpu_max", "quota_cpus", "usable_cpus"]

Read = Callable[[str], "str | None"]  # a file's text, None when it cannot be read


def parse_cpu_max(text: str) -> float | None:
    """CPUs granted by a cgroup v2 `cpu.max` ("QUOTA PERIOD", or "max PERIOD": no quota)."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _parse_v1(quota_text: str | None, period_text: str | None) -> float | None:
    """CPUs granted by cgroup v1 `cpu.cfs_quota_us` (-1: no quota) and `cpu.cfs_period_us`."""
    try:
        quota = int((quota_text or "").strip())
        period = int((period_text or "").strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fs type, super options) of each cgroup mount in a mountinfo text."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or not tail[0].startswith("cgroup"):
            continue
        options = set(tail[2].split(","))
        found.append((fields[3], fields[4], tail[0], options))
    return found


def _dirs(mount: str, root: str, path: str) -> list[str]:
    """The cgroup's directory under its mount and each parent's up to the mount (a limit on
    any of them applies); none when the mount does not hold it. A process in its own cgroup
    namespace sees its cgroup as "/": the mount itself, whatever the mount's root."""
    rel = PurePosixPath(path)
    if ".." in rel.parts:  # a cgroup outside this namespace's view
        return []
    if rel != PurePosixPath("/"):
        try:
            rel = rel.relative_to(PurePosixPath(root))
        except ValueError:  # a mount of another subtree
            return []
    else:
        rel = PurePosixPath(".")
    top = PurePosixPath(mount)
    here = top / rel
    dirs = [str(here)]
    while here != top:
        here = here.parent
        dirs.append(str(here))
    return dirs


def quota_cpus(cgroup: str, mountinfo: str, read: Read) -> float | None:
    """The CPUs a CPU quota grants this process (the lowest along its cgroup's path), None
    when it has none or the files say nothing readable."""
    v2_path = None
    v1_path = None
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    grants: list[float] = []
    for root, point, fstype, options in _mounts(mountinfo):
        if fstype == "cgroup2" and v2_path is not None:
            for d in _dirs(point, root, v2_path):
                text = read(f"{d}/cpu.max")
                grant = parse_cpu_max(text) if text is not None else None
                if grant is not None:
                    grants.append(grant)
        elif fstype == "cgroup" and "cpu" in options and v1_path is not None:
            for d in _dirs(point, root, v1_path):
                grant = _parse_v1(read(f"{d}/cpu.cfs_quota_us"), read(f"{d}/cpu.cfs_period_us"))
                if grant is not None:
                    grants.append(grant)
    return min(grants) if grants else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def usable_cpus(read: Read = _read, affinity: Callable[[], int] = _affinity) -> int:
    """The CPUs this process may use: its affinity's, lowered to its CPU quota rounded down;
    at least 1. (`read` and `affinity` are this process's own but for tests.)"""
    cpus = affinity()
    grant = quota_cpus(read("/proc/self/cgroup") or "", read("/proc/self/mountinfo") or "", read)
    if grant is not None:
        cpus = min(cpus, math.floor(grant))
    return max(1, cpus)
