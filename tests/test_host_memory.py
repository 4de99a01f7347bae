"""`keep_freed_host_memory`: with it, glibc's malloc stops handing a large allocation fresh
pages (each faulting in again) every time; the `video-diffusion` command applies it.
Checked in subprocesses, since the setting holds for the whole process."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from video_diffusion_pytorch import cli, host_memory

GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")

# page faults of ten 48 MiB allocations, each written once and freed, after three more
# that let the heap grow
FAULTS_OF_LARGE_ALLOCATIONS = textwrap.dedent(
    """
    import resource, sys, torch
    from video_diffusion_pytorch import keep_freed_host_memory
    if sys.argv[1] == "keep":
        assert keep_freed_host_memory()
    for _ in range(3):
        torch.empty(12 * 2**20).fill_(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.empty(12 * 2**20).fill_(1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_LARGE_ALLOCATIONS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


@GLIBC
def test_large_allocations_stop_faulting_their_pages_in_again():
    pages = 10 * 48 * 2**20 // 4096
    assert faults("default") > pages // 2  # glibc's default: fresh pages every time
    assert faults("keep") < pages // 4  # at most two of the allocations


def test_it_reports_no_effect_where_the_c_library_is_not_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert host_memory.keep_freed_host_memory() is False


@pytest.mark.parametrize("threshold, error", [(0, ValueError), (2**31, ValueError), (1.5, TypeError)])
def test_a_threshold_mallopt_cannot_take_is_refused(threshold, error):
    with pytest.raises(error, match="mmap_threshold"):
        host_memory.keep_freed_host_memory(threshold)


def test_the_command_keeps_freed_memory(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_host_memory", lambda: calls.append(True))
    assert cli.main(["sample", str(tmp_path / "missing.pt")]) == 2
    assert calls == [True]
