"""Quarantine of the cache's unclosed staging files: content a dead daemon was still writing
is never uploaded (only closed files are); the next mount moves it to ``lost+found/``."""

from __future__ import annotations

import logging
import os
import time

from octuefs.cachedir import CacheDir

log = logging.getLogger(__name__)


def quarantine_unclosed(staging_dir: str, root: str) -> None:
    """Files a dead daemon was still writing are never uploaded: move them to lost+found/."""
    try:
        left = os.listdir(staging_dir)
    except FileNotFoundError:
        return
    if not left:
        return
    found = CacheDir(root).lost_found
    os.makedirs(found, mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for fname in left:
        os.replace(os.path.join(staging_dir, fname), os.path.join(found, f"{stamp}-{fname}"))
    log.warning("%d file(s) were still open for writing when the last daemon stopped; only closed files are "
                "uploaded, so they were not: their content is kept in %s", len(left), found)
