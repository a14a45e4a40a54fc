"""Where the lab keeps its build cache and its running state."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "vmferry"


def cache_dir() -> Path:
    """Build cache (the vcsim binary); $VMFERRY_CACHE_DIR overrides the per-user default."""
    override = os.environ.get("VMFERRY_CACHE_DIR")
    path = Path(override) if override else Path(platformdirs.user_cache_dir(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def lab_dir() -> Path:
    """State of the lab started by the CLI; $VMFERRY_LAB_DIR overrides the per-user default."""
    override = os.environ.get("VMFERRY_LAB_DIR")
    path = Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME)) / "lab"
    path.mkdir(parents=True, exist_ok=True)
    return path
