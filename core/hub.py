"""Is the Hugging Face hub reachable from here? One quick probe (DNS + TCP connect, 3 s at most) instead of
huggingface_hub's five retries with back-off, which take about 90 s on an offline machine before it fails.

    if not hub_reachable(): go_offline()     # cached files still load; anything else fails at once
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

TRUE = ("1", "true", "yes", "on")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the hub's host (HF_ENDPOINT, default huggingface.co) does not
    answer on port 443 within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline() -> None:
    """Switch huggingface_hub, datasets and transformers of this process to offline mode (cache only)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
    except ImportError:
        pass
