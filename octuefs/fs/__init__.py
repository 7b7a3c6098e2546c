"""The filesystem in plain Python: lookups, directories, rename, open files with Datafile
semantics, extended attributes and POSIX attributes. It raises octuefs's own errors and knows
nothing of FUSE; :mod:`octuefs.fuse.ops` translates."""
