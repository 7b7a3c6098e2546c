"""What the filesystem core is built from: the caches and write-back the assembly made for it.

:mod:`octuefs.assembly` builds these (bucket -> caches -> write-back) and hands them over in one
:class:`MountParts`; each module of the core keeps only the ones it uses.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from octuefs.cache.content import ContentCache
    from octuefs.cache.listings import DirectoryFills
    from octuefs.cache.metacache import MetadataCache
    from octuefs.cache.prefetch import Prefetcher
    from octuefs.config import MountConfig
    from octuefs.fs.files import OpenFiles
    from octuefs.fs.times import Times
    from octuefs.namespace import Namespace
    from octuefs.storage.base import Bucket
    from octuefs.writeback.givebacks import OwedGiveBacks
    from octuefs.writeback.journal import Journal
    from octuefs.writeback.uploads import Uploader


@dataclasses.dataclass(frozen=True)
class MountParts:
    config: MountConfig
    bucket: Bucket  # the bounded view (--op-timeout) every call someone waits on goes through
    started: float  # when the mount started: the mtime of a directory that records none
    times: Times  # what stat shows as mtime and ctime (times.py)
    ns: Namespace
    metacache: MetadataCache
    fills: DirectoryFills
    cache: ContentCache
    journal: Journal  # the uploader's: closed files waiting, and the conflicts met
    uploader: Uploader
    files: OpenFiles
    prefetch: Prefetcher | None  # the next small files of a directory read in name order
    givebacks: OwedGiveBacks  # take-over renames not yet settled (givebacks.py)
