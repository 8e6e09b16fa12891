"""The CPUs a process may use (seams/cpus.py): its affinity, lowered to its CPU quota (cgroup v2
`cpu.max`, v1 `cpu.cfs_quota_us`) rounded down; what sizes the publishing worker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO

from tui_backfill.seams.cpus import parse_cpu_max, quota_cpus, usable_cpus

V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 /kubepods /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    "34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n"
)


def files(**texts: str):  # type: ignore[no-untyped-def]
    table = {path.replace("__", "/"): text for path, text in texts.items()}
    return lambda path: table.get(path)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("max 100000\n", None),
        ("150000 100000\n", 1.5),
        ("50000 100000", 0.5),
        ("200000", 2.0),  # the period defaults to 100 ms
        ("", None),
        ("garbage 100000", None),
        ("0 100000", None),
    ],
)
def test_cpu_max_is_read_as_a_share_of_cpus(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


def test_a_v2_quota_on_the_process_cgroup_or_a_parent_counts_the_lowest() -> None:
    cgroup = "0::/system.slice/publish@1.service\n"
    read = files(
        **{
            "/sys/fs/cgroup/system.slice/publish@1.service/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/system.slice/cpu.max": "250000 100000\n",
            "/sys/fs/cgroup/cpu.max": "max 100000\n",
        }
    )
    assert quota_cpus(cgroup, V2_MOUNT, read) == 2.5
    tighter = files(
        **{
            "/sys/fs/cgroup/system.slice/publish@1.service/cpu.max": "100000 100000\n",
            "/sys/fs/cgroup/system.slice/cpu.max": "250000 100000\n",
        }
    )
    assert quota_cpus(cgroup, V2_MOUNT, tighter) == 1.0


def test_no_quota_anywhere_is_none() -> None:
    assert quota_cpus("0::/user.slice\n", V2_MOUNT, files()) is None
    assert quota_cpus("0::/\n", V2_MOUNT, files(**{"/sys/fs/cgroup/cpu.max": "max 100000"})) is None
    assert quota_cpus("", "", files()) is None


def test_a_container_with_its_own_cgroup_namespace_reads_the_mount_itself() -> None:
    # Docker --cpus=1.5: the container sees its cgroup as "/" and the limit at the mount
    read = files(**{"/sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert quota_cpus("0::/\n", V2_MOUNT, read) == 1.5


def test_a_v1_quota_is_found_through_the_mount_of_the_cpu_controller() -> None:
    # The mount's root is /kubepods: the process's /kubepods/pod1/c1 is pod1/c1 under it
    cgroup = "4:cpuset:/kubepods/pod1/c1\n3:cpu,cpuacct:/kubepods/pod1/c1\n1:name=systemd:/\n"
    read = files(
        **{
            "/sys/fs/cgroup/cpu,cpuacct/pod1/c1/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu,cpuacct/pod1/c1/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/cpu,cpuacct/pod1/cpu.cfs_quota_us": "75000\n",
            "/sys/fs/cgroup/cpu,cpuacct/pod1/cpu.cfs_period_us": "50000\n",
        }
    )
    assert quota_cpus(cgroup, V1_MOUNTS, read) == 1.5
    unlimited = files(
        **{
            "/sys/fs/cgroup/cpu,cpuacct/pod1/c1/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu,cpuacct/pod1/c1/cpu.cfs_period_us": "100000\n",
        }
    )
    assert quota_cpus(cgroup, V1_MOUNTS, unlimited) is None


def test_a_cgroup_the_mount_does_not_hold_grants_nothing_from_it() -> None:
    read = files(**{"/sys/fs/cgroup/cpu.max": "50000 100000\n"})
    mount_of_a_subtree = "30 23 0:26 /other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert quota_cpus("0::/mine/app\n", mount_of_a_subtree, read) is None
    assert quota_cpus("0::/../outside\n", V2_MOUNT, read) is None  # beyond the namespace
    # in its own namespace a process sees "/", whatever the mount's root says
    assert quota_cpus("0::/\n", mount_of_a_subtree, read) == 0.5


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "usable"),
    [(4, None, 4), (4, "250000 100000", 2), (2, "300000 100000", 2), (4, "50000 100000", 1)],
)
def test_usable_cpus_is_the_affinity_lowered_to_the_quota_rounded_down_at_least_one(
    affinity: int, cpu_max: str | None, usable: int
) -> None:
    table = {"/proc/self/cgroup": "0::/\n", "/proc/self/mountinfo": V2_MOUNT}
    if cpu_max is not None:
        table["/sys/fs/cgroup/cpu.max"] = cpu_max
    assert usable_cpus(read=table.get, affinity=lambda: affinity) == usable


def _usable_in_child(cpus: set[int] | None) -> int:
    pin = f"import os; os.sched_setaffinity(0, {sorted(cpus)!r}); " if cpus else ""
    code = pin + "from tui_backfill.seams.cpus import usable_cpus; print(usable_cpus())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
        timeout=60,
    )  # fmt: skip
    return int(out.stdout)


def test_a_process_pinned_to_one_cpu_may_use_one() -> None:
    mine = os.sched_getaffinity(0)
    assert 1 <= _usable_in_child(None) <= len(mine)  # lower when this machine has a quota
    assert _usable_in_child({min(mine)}) == 1
