"""The FUSE adapter: :mod:`octuefs.fuse.ops` turns each FUSE call into a call on the filesystem
core (:mod:`octuefs.fs`) and each error into its errno; what stat shows, what the kernel's caches
are asked to keep and how a directory's listing is streamed sit beside it. Only ``ops`` speaks
mfusepy; nothing here touches a bucket, a cache or the journal."""
