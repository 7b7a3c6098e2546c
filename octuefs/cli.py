"""The ``octuefs`` command: parse arguments, configure logging once, and mount or unmount.

    octuefs mount BUCKET[/PREFIX] MOUNTPOINT [options]   # returns once mounted; daemon stays
    octuefs unmount MOUNTPOINT
    octuefs demo [MOUNTPOINT]                              # a seeded demo bucket, no cloud account
    octuefs BUCKET MOUNTPOINT -o opt,...                  # the form mount(8)/fstab uses (mount.fuse3)

Errors a user can meet come out as one line, ``octuefs: error: ...``, with a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import stat
import sys

from octuefs import __version__, configfile
from octuefs.cachedir import CacheDir
from octuefs.config import (
    MountConfig,
    format_size,
    parse_size,
    refuse_inside_mountpoint,
    split_bucket_spec,
)
from octuefs.errors import OctuefsError
from octuefs.logformat import LOG_FORMATS, formatter

log = logging.getLogger("octuefs")

# Generic mount options (mount(8)'s and fstab's) that mean nothing here; and -o flags of our own.
# Any other option of `octuefs mount` is also an -o key=value (cache_dir=..., list_ttl=10).
_DROPPED_OPTIONS = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "owner"}
_FLAG_OPTIONS = {"ro": "read_only", "local": "local", "upload_on_close": "upload_on_close",
                 "ignore_stored_owners": "ignore_stored_owners"}
_NOT_O_KEYS = {"bucket", "mountpoint", "options", "verbose", "read_only", "local", "upload_on_close",
               "ignore_stored_owners"}


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 644") from None


def _mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bucket", metavar="BUCKET[/PREFIX]", nargs="?",
                   help="bucket to mount, optionally with a prefix inside it (or `bucket` in --config)")
    p.add_argument("mountpoint", nargs="?", help="an existing, empty directory (or `mountpoint` in --config)")
    p.add_argument("--config", metavar="FILE",
                   help="read options from a TOML file (keys are the long options: list_ttl = 10, "
                        "options = [\"allow_other\"]); options on the command line win")
    p.add_argument("--print-config", action="store_true",
                   help="print the settings the mount would use, as a config file, and exit")
    p.add_argument("-f", "--foreground", action="store_true", help="stay attached instead of returning once mounted")
    p.add_argument("--local", action="store_true",
                   help="serve the bucket from an embedded local emulator (no cloud account needed)")
    p.add_argument("--cache-dir", help="local cache directory (default ~/.cache/octuefs/BUCKET)")
    p.add_argument("--cache-size", metavar="SIZE",
                   help="most clean (saved) data the cache keeps, least recently used evicted first: 500M, 10G, "
                        "1.5GiB, bytes, or 'unlimited'; unsaved data is never evicted (default: 10G, or half "
                        "the free space of the cache disk if that is less)")
    p.add_argument("--log-file", help="daemon log (default CACHE_DIR/octuefs.log in the background, stderr with -f)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text (default) or json: one JSON object per line, for log shippers")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options: ro, allow_other, default_permissions, or any option above as key=value")
    p.add_argument("--read-only", action="store_true", help="mount read-only (same as -o ro)")
    p.add_argument("--project", help="Google Cloud project (default: from Application Default Credentials)")
    p.add_argument("--uid", type=int, help="owner of entries that record none (default: you)")
    p.add_argument("--gid", type=int, help="group of entries that record none (default: yours)")
    p.add_argument("--file-mode", type=_octal,
                   help="permissions of files that record none, octal (default 644)")
    p.add_argument("--dir-mode", type=_octal,
                   help="permissions of directories that record none, octal (default 755)")
    p.add_argument("--ignore-stored-owners", action="store_true",
                   help="show every entry as owned by --uid/--gid, whatever uid/gid its object records "
                        "(for buckets written on machines whose user numbers differ); chown is still kept")
    p.add_argument("--stat-ttl", type=float, help="seconds a file's metadata is cached (default 30)")
    p.add_argument("--list-ttl", type=float, help="seconds a directory listing is cached (default 30)")
    p.add_argument("--negative-ttl", type=float, help="seconds a 'does not exist' is cached (default 5)")
    p.add_argument("--attr-timeout", type=float, help="kernel attribute cache, seconds (default 30)")
    p.add_argument("--entry-timeout", type=float, help="kernel name cache, seconds (default 30)")
    p.add_argument("--rename-dir-limit", type=int, help="most objects a directory rename may move (default 10000)")
    p.add_argument("--upload-on-close", action="store_true",
                   help="close waits for the upload (and reports its errors) instead of writing back in the background")
    p.add_argument("--upload-workers", type=int, help="uploads running at once (default 8)")
    p.add_argument("--small-uploads", type=int,
                   help="uploads of small files (up to 1 MiB) running at once (default 32)")
    p.add_argument("--upload-hold", type=float,
                   help="seconds a small file's upload waits for a burst of closes to pause (default 2; 0: at once)")
    p.add_argument("--prefetch-files", type=int, metavar="N",
                   help="a directory's files opened in name order: fetch up to N of the next small ones "
                        "before they are opened (default 32)")
    p.add_argument("--no-prefetch", dest="prefetch_files", action="store_const", const=0,
                   help="never fetch files before they are opened, neither the next ones of a directory read "
                        "in name order nor the rest of one read whole in no order (same as --prefetch-files 0)")
    p.add_argument("--fsync-timeout", type=float, help="seconds fsync waits for the bucket before EIO (default 300)")
    p.add_argument("--op-timeout", type=float,
                   help="seconds any other call waits for an unreachable bucket before ETIMEDOUT (default 30)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics (off by default; 0: any free port)")
    p.add_argument("--metrics-address", metavar="ADDR",
                   help="address the metrics listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)


def mount_parser() -> argparse.ArgumentParser:
    """The mount command's options alone: the keys a config file may hold, and their defaults."""
    p = argparse.ArgumentParser(prog="octuefs mount", add_help=False)
    _mount_arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="octuefs", description="Mount a GCS bucket with Octue metadata as xattrs.")
    parser.add_argument("--version", action="version", version=f"octuefs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _mount_arguments(sub.add_parser("mount", help="mount a bucket on a directory"))
    um = sub.add_parser("unmount", aliases=["umount"], help="write out pending changes and unmount")
    um.add_argument("mountpoint", nargs="?")
    um.add_argument("--config", metavar="FILE", help="unmount the mountpoint named in this config file")
    um.add_argument("--lazy", action="store_true", help="detach now even if busy (fusermount -uz)")
    um.add_argument("--leave-pending", action="store_true",
                    help="do not wait for pending uploads: the next mount with this cache directory finishes them")
    um.add_argument("--timeout", type=float, default=None, help="seconds to wait for pending uploads (default: no limit)")
    sy = sub.add_parser("sync", help="wait until every pending upload of a mount is in the bucket",
                        description="Wait until every pending upload of a mount is in the bucket, and print "
                                    "every conflict no earlier sync has reported (a file changed in the bucket "
                                    "meanwhile: your version was saved beside it). Exit status: 0 all uploaded; "
                                    "1 uploads still pending (or an error); "
                                    f"{EXIT_CONFLICT} all uploaded, but a conflict was reported.")
    sy.add_argument("mountpoint")
    sy.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    st = sub.add_parser("status", help="list a mount's pending, running and failed uploads and its conflicts")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("find", add_help=False, help="list files (or datasets) whose Octue metadata matches, from listings")
    sub.add_parser("manifest", add_help=False, help="write an Octue manifest of datasets, from listings")
    demo = sub.add_parser("demo", help="mount a demo bucket served by a local emulator")
    demo.add_argument("mountpoint", nargs="?", default=os.path.join(os.path.expanduser("~"), "octuefs-demo"))
    demo.add_argument("-v", "--verbose", action="count", default=0)
    return parser


class _OneLineParser(argparse.ArgumentParser):
    """find and manifest: a bad argument is one line and exit status 2, as for grep."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _datasets_command(argv: list[str]) -> int:
    """``octuefs find`` and ``octuefs manifest`` (their logic is octuefs.find's)."""
    from octuefs import find

    p = _OneLineParser(prog=f"octuefs {argv[0]}")
    if argv[0] == "manifest":
        p.add_argument("paths", nargs="+", metavar="PATH", help="dataset directories: gs://bucket/dir or in a mount")
        p.add_argument("-o", "--output", metavar="FILE", help="write the manifest here (default: standard output)")
        args = p.parse_args(argv[1:])
        return find.run_manifest(args.paths, args.output)
    p.description = "Exit status: 0 something matched, 1 nothing did, 2 an error."
    p.add_argument("path", metavar="PATH", help="gs://bucket/prefix, or a path inside an octuefs mount")
    p.add_argument("--label", action="append", default=[], metavar="L", help="has this label (repeatable)")
    p.add_argument("--tag", action="append", default=[], metavar="NAME[=VALUE]",
                   help="has this tag (with this value, as getfattr prints it); repeatable")
    p.add_argument("--since", metavar="T", help="Octue timestamp at or after T (POSIX seconds or ISO 8601)")
    p.add_argument("--until", metavar="T", help="Octue timestamp at or before T")
    p.add_argument("--datasets", action="store_true", help="list dataset directories (holding a .octue) instead")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("-print0", "--print0", dest="print0", action="store_true", help="NUL-separated, for xargs -0")
    args = p.parse_args(argv[1:])
    return find.run_find(args.path, args.label, args.tag, args.since, args.until, args.datasets, args.json,
                         args.print0)


def _apply_o_options(args: argparse.Namespace) -> list[str]:
    """Fold ``-o key=value`` options into args; return what is left for FUSE."""
    settings = {dest: action for dest, action in configfile.keys_of(mount_parser()).items() if dest not in _NOT_O_KEYS}
    fuse: list[str] = []
    for group in args.options:
        for opt in filter(None, (o.strip() for o in group.split(","))):
            key, eq, value = opt.partition("=")
            if key in settings and eq:
                action = settings[key]
                if action.choices and value not in action.choices:
                    raise ValueError(f"-o {opt}: {key} is one of {', '.join(action.choices)}")
                try:
                    setattr(args, key, action.type(value) if action.type else value)
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    raise ValueError(f"-o {opt}: {exc}") from None
            elif key in _FLAG_OPTIONS and not eq:
                setattr(args, _FLAG_OPTIONS[key], True)
            elif key in _DROPPED_OPTIONS or key.startswith("x-"):
                continue
            else:
                fuse.append(opt)
    return fuse


# Options naming a file or directory: made absolute as they are read (see _absolute_paths).
_PATH_OPTIONS = ("cache_dir", "log_file")


def _absolute_paths(args: argparse.Namespace) -> None:
    """A relative path option means relative to where the command was typed: the daemon runs
    in ``/`` (libfuse changes to it), so a relative path kept as given would name another place
    there (every write failed with ENOENT)."""
    for dest in _PATH_OPTIONS:
        value = getattr(args, dest, None)
        if value:
            setattr(args, dest, os.path.abspath(os.path.expanduser(value)))


def config_from_args(args: argparse.Namespace) -> MountConfig:
    fuse_options = _apply_o_options(args)
    _absolute_paths(args)
    bucket, prefix = split_bucket_spec(args.bucket)
    cache_size = None
    if args.cache_size is not None:
        try:
            cache_size = parse_size(args.cache_size)
        except ValueError as exc:
            raise ValueError(f"--cache-size: {exc}") from None
    fields = {f.name for f in dataclasses.fields(MountConfig)}
    given = {configfile.field_of(dest): getattr(args, dest) for dest in configfile.keys_of(mount_parser())
             if dest not in ("bucket", "mountpoint", "options", "cache_size")}
    return MountConfig(
        bucket=bucket, prefix=prefix, mountpoint=os.path.realpath(args.mountpoint),
        fuse_options=tuple(fuse_options), cache_size=cache_size,
        **{k: v for k, v in given.items() if v is not None and k in fields},
    )


def _open_private(path: str, flags: int) -> int:
    """Open the log, creating it 0600 whatever the umask (the daemon sets its own umask only
    later, in serve). A regular file of ours that anyone may read (an older octuefs created its
    log 0644) loses those bits; group bits someone chose stay, and devices are left alone."""
    fd = os.open(path, flags, 0o600)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o007:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o007)
    except OSError:
        os.close(fd)
        raise
    return fd


class _PrivateFileHandler(logging.FileHandler):
    """The daemon's log names the mount's files: only its owner reads it, from its creation."""

    def _open(self):
        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors,
                    opener=_open_private)


def configure_logging(verbose: int, log_file: str | None, quiet: bool = False, log_format: str = "text") -> None:
    """Logging for this process. ``quiet``: a front command whose failures print one line."""
    level = (logging.ERROR if quiet else logging.WARNING) if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    # Names from the kernel may hold bytes that are not UTF-8 (decoded with surrogateescape):
    # escape them in the log instead of failing the record with a "Logging error".
    handler: logging.Handler = (_PrivateFileHandler(log_file, encoding="utf-8", errors="backslashreplace")
                                if log_file else logging.StreamHandler(sys.stderr))
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "google", "mfusepy", "fuse"):  # their warnings repeat what our errors say
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 3 else logging.ERROR)


def _read_config_file(args: argparse.Namespace, argv: list[str]) -> None:
    """Fold ``--config FILE`` into ``args`` (what ``argv``, the mount command's arguments, says
    wins); a bucket and a mountpoint are needed from one or the other."""
    if args.config:
        configfile.merge(args, configfile.load(args.config, mount_parser()), configfile.given_on(argv, mount_parser()))
    if not args.bucket or not args.mountpoint:
        raise ValueError("a bucket and a mountpoint are needed: `octuefs mount BUCKET MOUNTPOINT`, "
                         "or `bucket` and `mountpoint` in the --config file")


def _child_argv(argv: list[str]) -> list[str]:
    """The daemon's arguments: the same, with --config made absolute (it reads the file again)."""
    out = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--config":
            arg = os.path.abspath(arg)
        elif arg.startswith("--config="):
            arg = "--config=" + os.path.abspath(arg.partition("=")[2])
        if arg not in ("--foreground", "-f"):
            out.append(arg)
    return out


def _mount(args: argparse.Namespace, argv: list[str]) -> int:
    from octuefs import mount

    _read_config_file(args, argv[1:])  # (argv[0] is "mount")
    config = config_from_args(args)
    log_file = args.log_file or (None if args.foreground else CacheDir(config.cache_dir).log)
    if args.print_config:
        return _print_out([configfile.effective(config, args, mount_parser(), log_file).rstrip("\n")])
    refuse_inside_mountpoint("the log file", log_file, config.mountpoint)
    if args.foreground:
        configure_logging(args.verbose, args.log_file, log_format=args.log_format)
        if args.ready_fd is None:
            mount.preflight(config)
        mount.serve(config, ready_fd=args.ready_fd)
        return 0
    configure_logging(args.verbose, None, quiet=True)
    mount.preflight(config, check_bucket=bool(args.verbose))
    child_argv = _child_argv(argv)
    if "--log-file" not in child_argv:
        child_argv += ["--log-file", log_file]
    pid = mount.start_background(child_argv, config, log_file)
    print(f"octuefs: mounted {args.bucket} on {config.mountpoint} (pid {pid}, log {log_file})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from octuefs.local.demo import DEMO_BUCKET

    os.makedirs(args.mountpoint, exist_ok=True)
    argv = ["mount", "--local", DEMO_BUCKET, args.mountpoint] + ["-v"] * args.verbose
    rc = main(argv)
    if rc == 0:
        mp = args.mountpoint
        print(f"Try:\n  ls -l {mp}/wind\n  getfattr -d {mp}/wind/anemometer-2024-01-01.csv\n"
              f"  setfattr -n user.octue.labels -v 'raw cleaned' {mp}/wind/anemometer-2024-01-01.csv\n"
              f"Unmount with: octuefs unmount {mp}")
    return rc


def _progress_printer(what: str):
    """Progress of pending uploads on stderr, one updating line; silent when nothing is pending."""
    def show(reply: dict) -> None:
        total = reply.get("total", 0)
        if total:
            end = "\n" if reply.get("done") == total else ""
            print(f"\roctuefs: {what} {reply.get('done', 0)}/{total} uploads", end=end, file=sys.stderr, flush=True)
    return show


# `octuefs sync` exits 1 when uploads are still pending, else EXIT_CONFLICT when it reported a
# conflict: everything is in the bucket, but some version of yours went beside its object.
EXIT_CONFLICT = 3


def _print_conflicts(lines: list[str]) -> None:
    for line in lines:
        print(f"octuefs: conflict: {line}", file=sys.stderr)


def _sync(args: argparse.Namespace) -> int:
    from octuefs.mount import sync

    left, conflicts = sync(args.mountpoint, _progress_printer("uploading"), args.timeout)
    _print_conflicts(conflicts)
    if left:
        print(f"octuefs: error: {left} upload(s) still pending (see `octuefs status {args.mountpoint}`)",
              file=sys.stderr)
        return 1
    return EXIT_CONFLICT if conflicts else 0


EXIT_SIGPIPE = 128 + 13  # what a shell reports for a command killed by SIGPIPE (`ls | head`)


def _print_out(lines: list[str]) -> int:
    """Print to stdout; a reader that went away (``| head``) ends the output quietly, as it
    does for any command-line tool, instead of a BrokenPipeError traceback."""
    try:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit, which would fail the same way: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SIGPIPE
    return 0


def _status(args: argparse.Namespace) -> int:
    import json

    from octuefs.mount import status

    report = status(args.mountpoint)
    if args.json:
        return _print_out([json.dumps(report, indent=2)])
    uploads, conflicts = report["uploads"], report["conflicts"]
    out = [f"gs://{report['bucket']}/{report['prefix']} on {args.mountpoint}: {len(uploads)} upload(s) pending"]
    if "cache" in report:
        cache = report["cache"]
        limit = "no limit" if cache["limit"] is None else f"limit {format_size(cache['limit'])}"
        out.append(f"  cache: {format_size(cache['clean_bytes'])} clean ({limit}), "
                   f"{format_size(cache['unsaved_bytes'])} unsaved (never evicted)")
        if cache.get("error"):
            out.append(f"  cache: ERROR {cache['error']}: nothing can be written into the mount until it can")
    for row in uploads:
        error = f"  last error: {row['last_error']}" if row["last_error"] else ""
        what = "  (metadata change)" if row.get("kind") == "metadata" else ""
        out.append(f"  {row['state']:<8} {row['size']:>12,d} B  {row['name']}{what}  (attempts {row['attempts']}){error}")
    for c in conflicts:
        out.append(f"  conflict: {c['object']} changed in the bucket ({c['theirs']}); yours saved as {c['saved_as']}")
    for g in report.get("give_backs", []):
        out.append(f"  owed     give-back: {g['name']} still carries the Octue id of {g['replacing']} (a rename "
                   "over it failed); given back as soon as the bucket answers, and `octuefs sync` waits for it")
    return _print_out(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"mount", "unmount", "umount", "demo", "sync", "status", "-h", "--help", "--version"}
    if argv and argv[0] in ("find", "manifest"):
        configure_logging(0, None, quiet=True)
        return _datasets_command(argv)
    if argv and argv[0] not in commands and not argv[0].startswith("-"):
        argv = ["mount", *argv]  # mount.fuse3 runs "octuefs SOURCE MOUNTPOINT -o OPTIONS"
    args = build_parser().parse_args(argv)
    try:
        if args.command == "mount":
            return _mount(args, argv)
        if args.command == "demo":
            return _demo(args)
        configure_logging(0, None, quiet=True)
        if args.command == "status":
            return _status(args)
        if args.command == "sync":
            return _sync(args)
        from octuefs.mount import unmount

        if args.config and not args.mountpoint:
            args.mountpoint = configfile.load(args.config, mount_parser()).get("mountpoint")
        if not args.mountpoint:
            raise ValueError("which mountpoint? `octuefs unmount MOUNTPOINT`, or --config naming one")
        # Conflicts are shown, but the unmount itself succeeded: 0. (`octuefs sync` first, for
        # a script that must see them in the exit status.)
        _print_conflicts(unmount(args.mountpoint, timeout=args.timeout, lazy=args.lazy,
                                 leave_pending=args.leave_pending, progress=_progress_printer("writing out")))
        return 0
    except OctuefsError as exc:
        print(f"octuefs: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except ValueError as exc:  # configuration errors
        print(f"octuefs: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
