"""Can the Hugging Face hub be used right now? Asked once and quickly, so an offline loader fails in a second
with a message naming the fix, instead of after a minute of transformers/datasets retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def offline_mode() -> bool:
    """True when any Hugging Face offline switch is on."""
    return any(os.environ.get(flag, "").upper() in ("1", "ON", "YES", "TRUE") for flag in OFFLINE_FLAGS)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub's host."""
    try:
        socket.create_connection((hub_host(), 443), timeout=timeout).close()
        return True
    except OSError:
        return False
