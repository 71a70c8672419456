"""Debian's Chromium for the report's browser tests, installed on first use where it is
missing, so that the README's test command passes as written on a fresh machine."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

# fonts-noto-cjk: the report's CJK class and file names must render as text, not boxes.
PACKAGES = ("chromium", "fonts-noto-cjk")


@functools.cache
def chromium() -> str:
    """The chromium executable, installed with apt-get (as root, or with sudo that asks for
    no password) when it is not on PATH."""
    found = shutil.which("chromium")
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    root = os.geteuid() == 0
    sudo = shutil.which("sudo")
    if apt is None or not (root or sudo):
        pytest.fail(
            "chromium is not installed and this machine cannot install it (needs apt-get, as "
            f"root or with sudo): apt-get install -y --no-install-recommends {' '.join(PACKAGES)}"
        )
    as_root = [] if root else [str(sudo), "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["update"], ["install", "-y", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(
            [*as_root, apt, *step], env=env, capture_output=True, text=True, timeout=1200
        )
        if done.returncode != 0:
            pytest.fail(f"apt-get {step[0]} failed, so chromium is missing:\n{done.stderr[-2000:]}")
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(f"apt-get installed {PACKAGES[0]}, yet no chromium is on PATH")
    return found
