"""``docxy cache ls | du | rm | gc``: look at and tidy the cache directory of a mirror.

The commands run beside a live mirror on the same ``cache.dir``: they never clear the mirror's
temp files (only ``gc``, and then only old ones), and ``rm`` refuses to delete a blob that a
process has open (``/proc/<pid>/fd``), so a client streaming it is never cut. Image names follow
Docker's rules: ``redis`` is ``library/redis:latest`` on the configured upstream.

Exit codes: 0 done, 1 not found or in use (or not all done: the disk refused a delete, or
``ls``/``du`` a read, or any command the opening of the cache), 2 configuration or usage
error; ``gc`` stopped by SIGINT (Ctrl-C) 130,
by SIGTERM 143, its report of what it did so far printed first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import sys
import time
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import TextIO

from docxy.cache import (
    BlobEntry,
    BlobInUse,
    Cache,
    Digest,
    DiskBlobStore,
    ManifestStore,
    RepoKey,
    TagEntry,
    open_configured,
    referenced_digests,
)
from docxy.cache.blobs import GcReport, GcTally
from docxy.cache.files import os_error
from docxy.cache.images import ImageKey, below
from docxy.cache.visibility import upstream_key
from docxy.cli.exits import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, cancelled_by_signals, exit_code
from docxy.cli.options import ConfigLoader, add_config_arguments
from docxy.cli.owner import Owner
from docxy.config import Config
from docxy.core.digests import ALGORITHMS
from docxy.core.errors import ConfigError
from docxy.core.hosts import url_host
from docxy.core.names import ImageRef, parse_image_ref, upstream_name

EXIT_NOT_FOUND = EXIT_FAILED


# --- formatting (pure) ----------------------------------------------------------------------


def human_size(size: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """``95`` → ``1m``; negative ages (clock skew) show as ``0s``."""
    seconds = max(0, int(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


def columns(rows: Iterable[tuple[str, ...]]) -> list[str]:
    """Rows as lines with left-aligned columns two spaces apart."""
    table = list(rows)
    if not table:
        return []
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


#: How ls marks a tag whose manifest is not cached (noted from a HEAD, or its manifest not
#: kept): the mirror asks the upstream for it, so with the upstream down it does not pull.
NOTED = "noted (manifest not cached)"


def tag_rows(
    tags: Iterable[TagEntry],
    now: float,
    names: Mapping[str, str] | None = None,
    noted: Container[TagEntry] = (),
) -> list[tuple[str, ...]]:
    """One row per tag record; ``names`` shows an upstream's host (the store's key) by name;
    those ``noted`` (their manifests not cached) are marked so."""
    names = names or {}
    ordered = sorted(tags, key=lambda t: (t.repo.upstream, t.repo.repo, t.tag))
    return [
        (
            "tag",
            names.get(t.repo.upstream, t.repo.upstream),
            f"{t.repo.repo}:{t.tag}",
            str(t.digest),
            human_age(now - t.fetched_at),
            "public" if t.public else "private",
            NOTED if t in noted else "",
        )
        for t in ordered
    ]


def blob_rows(entries: Iterable[BlobEntry], now: float) -> list[tuple[str, ...]]:
    blobs = list(entries)
    blobs.sort(key=lambda e: (-e.last_used, str(e.digest)))  # most recently used first
    return [
        ("blob", str(e.digest), human_size(e.size), f"used {human_age(now - e.last_used)} ago")
        for e in blobs
    ]


# --- the cache, opened for administration -------------------------------------------------


def open_by_processes(paths: Iterable[Path]) -> dict[Path, int]:
    """Which of ``paths`` some process has open, with one such pid (Linux ``/proc``; ``{}``
    elsewhere or for processes we may not inspect)."""
    wanted = {os.path.realpath(path): path for path in paths}
    found: dict[Path, int] = {}
    if not wanted or not os.path.isdir("/proc/self/fd"):
        return found
    for proc in os.scandir("/proc"):
        if not proc.name.isdigit():
            continue
        try:
            fds = list(os.scandir(f"/proc/{proc.name}/fd"))
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target in wanted:
                found.setdefault(wanted[target], int(proc.name))
    return found


async def manifest_closure(
    store: ManifestStore, repo: RepoKey, roots: Iterable[Digest]
) -> set[Digest]:
    """Every digest reachable from the manifests ``roots`` (children, configs, layers)."""
    seen: set[Digest] = set()
    pending = list(roots)
    while pending:
        digest = pending.pop()
        if digest in seen:
            continue
        seen.add(digest)
        manifest = await store.get(repo, digest, pulled=False)
        if manifest is not None:
            pending.extend(referenced_digests(manifest.content))
    return seen


async def unshared(
    cache: Cache, repo: RepoKey, roots: Iterable[Digest], others: Iterable[TagEntry]
) -> tuple[set[ImageKey], list[Digest]]:
    """What ``rm --blobs`` of ``roots`` in ``repo`` takes: the cached blobs the manifests
    ``roots`` reach need that no other cached image needs (none of the ``others`` tags'
    images, nor any manifest cached apart from what ``roots`` reach: an image pulled by
    digest, no tag on it, with the platforms below it), and those of its manifests that need
    none of these blobs, which removing the blobs would not take along. Deleting a blob
    another image needs would take that image out of the cache with it; a manifest of
    ``roots`` left cached (its blobs all shared) would keep them from a later ``rm --blobs``
    of the image it shares them with."""
    mine = await manifest_closure(cache.manifests, repo, roots)
    for other in others:
        mine -= await manifest_closure(cache.manifests, other.repo, [other.digest])
    catalogue = {image.key: image for image in cache.manifests.images()}
    upstream = upstream_key(repo.upstream)
    own = {key for key in (ImageKey(upstream, digest) for digest in mine) if key in catalogue}
    kept = below((key for key in catalogue if key not in own), catalogue)
    for key in kept:
        mine -= catalogue[key].blobs
    blobs = sorted((e.digest for e in cache.blobs.list_entries() if e.digest in mine), key=str)
    doomed = set(blobs)
    # Those needing one of the blobs (theirs or a platform's below them) go with it.
    lingering = {
        key
        for key in own - kept
        if not any(catalogue[each].blobs & doomed for each in below([key], catalogue))
    }
    return lingering, blobs


def upstream_host(config: Config) -> str:
    return url_host(config.upstream.registry)


def upstream_names(config: Config) -> dict[str, str]:
    """The store's key of each configured upstream (its registry's host) → its name; two
    sections may be one upstream on one host (identical but for their names): ``a.io,b.io``."""
    names: dict[str, list[str]] = {}
    for upstream in config.upstreams:
        names.setdefault(url_host(upstream.registry), []).append(upstream.name)
    return {host: ",".join(each) for host, each in names.items()}


def repo_key(image: ImageRef, config: Config) -> RepoKey:
    """Where the mirror keeps ``image``: Docker Hub names live under the configured upstream,
    ``ghcr.io/owner/img`` under the upstream named ghcr.io when there is one."""
    if image.on_hub():
        return RepoKey(upstream_host(config), image.name)
    for upstream in config.upstreams:
        if upstream.name == image.domain:  # its own library/ rule, as the mirror applies it
            name = upstream_name(image.name, upstream.library_prefix)
            return RepoKey(url_host(upstream.registry), name)
    return RepoKey(str(image.domain), image.name)


# --- the commands -------------------------------------------------------------------------


def cmd_ls(cache: Cache, args: argparse.Namespace, out: TextIO) -> int:
    now = time.time()
    rows: list[tuple[str, ...]] = []
    if not args.blobs_only:
        tags = cache.manifests.list_tags()
        noted = noted_tags(cache.manifests, tags)
        rows.extend(tag_rows(tags, now, getattr(args, "upstream_names", None), noted))
    lines = columns(rows)
    if not args.tags_only:
        lines.extend(columns(blob_rows(cache.blobs.list_entries(), now)))
    for line in lines:
        print(line, file=out)
    return EXIT_OK


def cmd_du(cache: Cache, args: argparse.Namespace, out: TextIO, *, capped: bool = True) -> int:
    """What the cache holds; its share of ``cache.max_size`` only when a cap was given to this
    command (as for gc: the default may not be the mirror's cap)."""
    usage = cache.blobs.usage()
    percent = 100.0 * usage.bytes / usage.max_size if usage.max_size else 0.0
    filling = fills_in(cache.blobs.tmp_dir)
    tags = cache.manifests.list_tags()
    noted = len(noted_tags(cache.manifests, tags))
    counted = str(len(tags) - noted)
    if noted:
        which = "its manifest" if noted == 1 else "their manifests"
        counted += f" (and {noted} noted, {which} not cached)"
    rows = [
        ("blobs", str(usage.entries)),
        ("tags", counted),
        ("size", _bytes(usage.bytes)),
        ("max_size", _bytes(usage.max_size) if capped else NO_CAP_GIVEN),
        ("used", f"{percent:.1f}%" if capped else "-"),
        ("filling", f"{filling} blobs being fetched"),
    ]
    for key, value in rows:
        print(f"{key + ':':<10} {value}", file=out)
    return EXIT_OK


def noted_tags(store: ManifestStore, tags: Iterable[TagEntry]) -> set[TagEntry]:
    """Those of ``tags`` whose manifests are not cached: noted from a HEAD (a client that had
    the image), or whose manifest the disk did not keep. The mirror resolves them upstream."""
    return {tag for tag in tags if not store.points_at_cached(tag)}


def fills_in(tmp: Path) -> int:
    """Blob downloads in progress: temp files named ``<algorithm>-<hex>.<suffix>``, not the
    evicted blobs a live mirror is freeing beside them (``evicted-<hex>.<suffix>``)."""
    if not tmp.is_dir():
        return 0
    return sum(1 for entry in os.scandir(tmp) if entry.name.split("-", 1)[0] in ALGORITHMS)


def _elsewhere(tags: list[TagEntry], repo: RepoKey, tag: str | None) -> str:
    """The upstreams that tag is cached from, when it is not from the one asked for: the
    mirror was started with another upstream.registry than this command sees."""
    hosts = sorted({t.repo.upstream for t in tags if t.repo.repo == repo.repo and t.tag == tag})
    if not hosts:
        return ""
    return (
        f"; it is cached from {', '.join(hosts)}: give --upstream with that registry's URL "
        f"(or the mirror's --config), as the mirror was started with"
    )


def _no_tag(image: ImageRef, repo: RepoKey, tags: list[TagEntry]) -> int:
    """Say that ``rm`` found no tag ``image`` names (and where else it is cached); exit 1."""
    print(
        f"docxy cache rm: {image} is not cached (no tag {repo.repo}:{image.tag} "
        f"from {repo.upstream}){_elsewhere(tags, repo, image.tag)}",
        file=sys.stderr,
    )
    return EXIT_NOT_FOUND


async def cmd_rm(cache: Cache, image: ImageRef, repo: RepoKey, blobs: bool, out: TextIO) -> int:
    """Forget ``image``'s tag (``IMAGE:TAG``), every tag on a digest (``IMAGE@DIGEST``), or
    one tag checked to point at a digest (``IMAGE:TAG@DIGEST``: another tag on it stays; a
    tag pointing elsewhere is refused, nothing removed); ``blobs``: and what only it needs."""
    store = cache.manifests
    tags = store.list_tags()
    if image.digest is not None and image.tag is not None:  # that tag, if it points there
        targets = [t for t in tags if t.repo == repo and t.tag == image.tag]
        roots = {image.digest}
        if not targets:
            return _no_tag(image, repo, tags)
        if any(t.digest != image.digest for t in targets):
            print(
                f"docxy cache rm: {repo.repo}:{image.tag} points at {targets[0].digest}, not "
                f"{image.digest}; nothing removed",
                file=sys.stderr,
            )
            return EXIT_NOT_FOUND
    elif image.digest is not None:
        targets = [t for t in tags if t.repo == repo and t.digest == image.digest]
        roots = {image.digest}
        if not targets and await store.get(repo, image.digest, pulled=False) is None:
            print(f"docxy cache rm: {image} is not cached", file=sys.stderr)
            return EXIT_NOT_FOUND
    else:
        targets = [t for t in tags if t.repo == repo and t.tag == image.tag]
        roots = {t.digest for t in targets}
        if not targets:
            return _no_tag(image, repo, tags)
    others = [t for t in tags if t not in targets]
    images, doomed = await unshared(cache, repo, roots, others) if blobs else (set(), [])
    busy = open_by_processes(cache.blobs.path_of(d) for d in doomed)
    for path, pid in sorted(busy.items()):
        print(
            f"docxy cache rm: blob {path.name[:12]} is being read (pid {pid}); "
            "nothing removed, try again later",
            file=sys.stderr,
        )
    if busy:
        return EXIT_NOT_FOUND
    if not targets:
        print(f"no tag points at {image.digest}", file=out)
    for tag in targets:
        await store.forget_tag(tag.repo, tag.tag)
        print(f"untagged {tag.repo.upstream}/{tag.repo.repo}:{tag.tag} ({tag.digest})", file=out)
    status = _remove_blobs(cache.blobs, doomed, out)  # each taking the images needing it
    # The image itself, not only its tags: left cached by digest, its manifests whose blobs
    # are all shared would keep them from the `rm --blobs` of the image they share them with.
    try:
        store.forget_images(images)
    except OSError as exc:  # read-only, another owner's files: kept, cached as before
        print(cannot("change", "rm", cache.blobs.root, exc), file=sys.stderr)
        return EXIT_FAILED
    return status


def _remove_blobs(store: DiskBlobStore, doomed: list[Digest], out: TextIO) -> int:
    """Remove each blob (the images that need it first); one the disk keeps (its file, or an
    image that needs it) is said and kept, and the others go on: exit 1 at the end."""
    sizes = {e.digest: e.size for e in store.list_entries()}
    freed, status = 0, EXIT_OK
    kept: list[Digest] = []
    refusals: set[tuple[object, int | None]] = set()
    for digest in doomed:
        size = human_size(sizes.get(digest, 0))
        try:
            removed = store.delete(digest)
        except BlobInUse:
            print(f"docxy cache rm: blob {digest} is being read; kept", file=sys.stderr)
            status = EXIT_NOT_FOUND
            continue
        except OSError as exc:  # read-only, another owner's files: each refused file said once
            if (exc.filename, exc.errno) not in refusals:
                refusals.add((exc.filename, exc.errno))
                print(cannot("change", "rm", store.root, exc), file=sys.stderr)
            print(f"kept blob {digest} ({size}): the disk refused a delete", file=out)
            kept.append(digest)
            continue
        if removed is None:  # a live mirror evicted it since it was listed: not freed here
            print(f"blob {digest} ({size}) was gone already (meanwhile)", file=out)
            continue
        freed += removed
        print(f"removed blob {digest} ({human_size(removed)})", file=out)
    if doomed:
        print(f"freed {human_size(freed)}", file=out)
    if kept:
        total = human_size(sum(sizes.get(digest, 0) for digest in kept))
        blobs = "1 blob" if len(kept) == 1 else f"{len(kept)} blobs"
        print(f"not removed: {blobs} ({total}) (the disk refused: see above)", file=out)
        return EXIT_FAILED
    return status


def cannot(verb: str, command: str, directory: Path, exc: OSError) -> str:
    """The line saying the disk refused to ``verb`` (change: rm, gc; open: any command; read:
    ls, du): ``docxy cache rm: cannot change DIR: FILE Permission denied``."""
    where = f" {exc.filename}" if exc.filename else ""
    return f"docxy cache {command}: cannot {verb} {directory}:{where} {exc.strerror or exc}"


def refused(root: Path, exc: OSError) -> str:
    """What the disk refused that stopped gc, for its report: ``the disk refused a change to
    tmp/NAME (Permission denied, EACCES)``, the file named as under the cache directory (a
    delete, mostly; the stderr line says it whole: :func:`cannot`)."""
    if not isinstance(exc.filename, str | bytes) or not exc.filename:
        return f"the disk refused a change ({os_error(exc)})"
    path = Path(os.fsdecode(exc.filename))
    where = path.relative_to(root) if path.is_relative_to(root) else path
    return f"the disk refused a change to {where} ({os_error(exc)})"


def _bytes(size: int) -> str:
    return f"{human_size(size)} ({size} bytes)"


#: What gc says instead of evicting with a cap nobody gave it, and du instead of that cap (the
#: default may not be the mirror's: a mirror run with 100G in its unit file, gc run from a
#: shell, evicted 80 GB).
NO_CAP_GIVEN = "none, cache.max_size is not set for this command (the mirror's may differ)"


#: What gc --verify did with a corrupt blob a process has open (a client pulling it).
IN_USE = "a process has it open; run gc --verify again once it is closed"


#: Why gc did not get under the cap: it evicts no blob a process has open (nor one an image
#: that is kept needs), and the disk may have kept some.
STILL_OVER = "the rest is being read or kept; run gc again later"


async def cmd_gc(cache: Cache, verify: bool, out: TextIO, *, evict: bool = True) -> int:
    """Tidy the cache and print what was done: also when it stops early, at a file the disk
    keeps (a manifest or tag record eviction may not delete: one line, exit 1), or at a
    SIGINT (Ctrl-C) or SIGTERM (a service stopped): the report so far, marked interrupted,
    exit 130 or 143."""
    # A mirror running beside this gc reads its blobs in another process, whose pins this one
    # cannot see: those open now are pinned here, neither evicted nor removed (the client
    # reading one would go on, but its blocks stay taken until it ends, and the next pull
    # fetches it again); --verify hashes them all the same, and counts a corrupt one it keeps.
    store = cache.blobs
    paths = {store.path_of(entry.digest): entry.digest for entry in store.list_entries()}
    tally = GcTally()
    ending: list[tuple[str, str]] = []
    interrupted: signal.Signals | None = None
    with cancelled_by_signals() as caught, contextlib.ExitStack() as pins:
        for path in open_by_processes(paths):
            pins.enter_context(store.pinned(paths[path]))
        try:
            held = {path.name for path in open_by_processes(_temp_files(store))}
            await _tidy_manifests(cache, tally)
            await store.gc(verify=verify, evict=evict, tally=tally, spare=held)
        except OSError as exc:  # read-only, another owner's files (EACCES), EIO
            print(cannot("change", "gc", store.root, exc), file=sys.stderr)
            ending.append(("stopped", f"{refused(store.root, exc)}; the rest not done"))
        except asyncio.CancelledError:
            if not caught:  # not by a signal of ours: not ours to report
                raise
            interrupted = caught[0]
            uncancel(asyncio.current_task())
            print(f"docxy cache gc: interrupted ({interrupted.name})", file=sys.stderr)
            ending.append(("interrupted", f"by {interrupted.name}; the rest not done"))
    report = tally.report()
    if tally.refused:
        ending.insert(0, ("not removed", _not_removed(store.root, tally.refused)))
    rows = gc_rows(report, verify, evict, ending)
    for line in columns((key + ":", value) for key, value in rows):
        print(line, file=out)
    if interrupted is not None:
        return exit_code(interrupted)
    failed = (
        ending
        or report.evict_failed
        or report.over_bytes
        or report.corrupt_kept
        or report.corrupt_in_use
    )
    return EXIT_FAILED if failed else EXIT_OK


async def _tidy_manifests(cache: Cache, tally: GcTally) -> None:
    """What a kill or a full disk left in the manifest and access trees (a ``.json`` record
    without its manifest, records of a manifest not cached, old temp files), counted as stray
    files; those the disk keeps, as gc's other refused files."""
    removed, refused = await asyncio.to_thread(cache.manifests.tidy)
    tally.removed_stray += removed
    tally.refused.extend(refused)


def _temp_files(store: DiskBlobStore) -> list[Path]:
    """The files in the store's ``tmp/`` now (none if it cannot be listed: gc says why)."""
    try:
        with os.scandir(store.tmp_dir) as listing:
            return [Path(entry.path) for entry in listing]
    except OSError:
        return []


def _not_removed(root: Path, refused: list[tuple[Path, OSError]]) -> str:
    """Say on stderr each file gc could not remove (a root run's leftovers, from before the
    CLI acted as the cache's owner: root's, in a directory of root's), and the one command that
    hands them over, in the entrypoint's words; the report's row."""
    for path, exc in refused:
        print(f"docxy cache gc: cannot remove {path}: {exc.strerror or exc}", file=sys.stderr)
    if not any(exc.errno in (errno.EACCES, errno.EPERM) for _, exc in refused):
        return f"{len(refused)} (the disk refused: see above; the rest done)"  # EIO, EROFS
    me = f"{os.geteuid()}:{os.getegid()}"  # acting as the owner: the owner's
    print(
        f"docxy cache gc: give them to this user once: chown -R {me} {root} (as root; in the "
        f"appliance: docker compose run --rm --user 0 --entrypoint chown docxy -R {me} {root}),"
        " then run gc again",
        file=sys.stderr,
    )
    return f"{len(refused)} (the disk refused: see above; the rest done)"


def uncancel(task: asyncio.Task[object] | None) -> None:
    """The task handled its cancellation (it reports and returns): no longer cancelling."""
    if task is not None:
        task.uncancel()


def gc_rows(
    report: GcReport, verify: bool, evict: bool, ending: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """gc's report, as (key, value) rows; ``ending``: how it ended, when it stopped early."""
    rows = [
        ("temp files removed", str(report.removed_tmp)),
        ("stray files removed", str(report.removed_stray)),
        ("corrupt blobs removed", str(report.removed_corrupt) if verify else "not checked"),
        ("blobs evicted", str(report.evicted) if evict else NO_CAP_GIVEN),
        ("freed", _bytes(report.freed_bytes)),  # by this gc; not what went meanwhile:
        ("gone meanwhile", _bytes(report.gone_bytes)),  # a live mirror's evictions, `rm`
    ]
    if report.corrupt_kept:  # each said in a WARNING line: the disk refused a delete
        rows.append(("corrupt blobs kept", f"{report.corrupt_kept} (the disk refused: see above)"))
    if report.corrupt_in_use:  # each said in a WARNING line: a process has it open
        rows.append(("corrupt blobs being read", f"{report.corrupt_in_use} (kept: {IN_USE})"))
    if report.evict_failed:  # each said in a WARNING line: the disk kept them
        rows.append(("not evicted", f"{report.evict_failed} (the disk refused: see above)"))
    if report.over_bytes:  # what is left is open in a process (a client reading it), or kept
        rows.append(("still over max_size", f"{_bytes(report.over_bytes)}: {STILL_OVER}"))
    return rows + ending


# --- wiring into ``docxy`` ------------------------------------------------------------------


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``docxy cache`` and its subcommands; ``args.handler(args, load_config)`` runs one."""
    common = argparse.ArgumentParser(add_help=False)
    add_config_arguments(common)
    common.add_argument("--cache-dir", metavar="DIR", help="the cache directory (cache.dir)")
    common.add_argument("--upstream", metavar="URL", help="upstream registry (for IMAGE names)")
    cache = commands.add_parser("cache", help="inspect and tidy the cache directory")
    cache.set_defaults(handler=run)
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", parents=[common], help="list cached tags and blobs")
    only = ls.add_mutually_exclusive_group()
    only.add_argument("--tags", dest="tags_only", action="store_true", help="tags only")
    only.add_argument("--blobs", dest="blobs_only", action="store_true", help="blobs only")
    actions.add_parser(
        "du",
        parents=[common],
        help="how much the cache holds (against cache.max_size only when given)",
    )
    rm = actions.add_parser(
        "rm", parents=[common], help="forget a cached tag (and, with --blobs, its blobs)"
    )
    rm.add_argument("image", metavar="IMAGE[:TAG][@DIGEST]")
    rm.add_argument(
        "--blobs",
        dest="rm_blobs",
        action="store_true",
        help=(
            "also delete the blobs it references that no other cached image needs (tagged "
            "or pulled by digest)"
        ),
    )
    gc = actions.add_parser(
        "gc",
        parents=[common],
        help="drop stray and old temp files; evict down to cache.max_size only when given",
        description=(
            "Drop stray files and temp files over an hour old; evict down to cache.max_size "
            "only when it is given to this command (--set cache.max_size=100G, "
            "DOCXY_CACHE_MAX_SIZE, --config): the mirror's own cap may not be the default. "
            "Blobs a process has open are left alone."
        ),
    )
    gc.add_argument(
        "--verify",
        action="store_true",
        help="re-hash every blob, drop corrupt ones (those being read are only said)",
    )


def run(args: argparse.Namespace, load_config: ConfigLoader) -> int:
    out = sys.stdout
    try:
        config = load_config(args)
        image = None
        if args.cache_command == "rm":
            image = parse_image_ref(args.image, library_prefix=config.upstream.library_prefix)
    except (ConfigError, ValueError) as exc:
        print(f"docxy cache: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Run as root (`docker exec -u 0 <container> docxy cache gc`), it acts as the owner of the
    # cache directory, the mirror's user: a directory it made (tmp/, where a cache had none
    # yet) was root's, and the mirror could write no blob there.
    owner = Owner.of(config.cache.dir, mirror=config.cache.dir)
    try:
        with owner.acting():
            return _run(args, config, image, out)
    except PermissionError as exc:  # a root that may not change its uid (cap_drop): says how
        if owner.acted:
            raise
        print(f"docxy cache {args.cache_command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _run(args: argparse.Namespace, config: Config, image: ImageRef | None, out: TextIO) -> int:
    directory = config.cache.dir
    try:
        cache = open_configured(config, admin=True)  # as the mirror opens it
    except FileNotFoundError:
        if args.cache_command in ("ls", "du", "gc"):
            # 1: a mistyped --cache-dir (or a missing --config) is no empty cache to a script
            why = "no docxy cache in it" if directory.exists() else "no such directory"
            print(f"docxy cache: no cache in {directory} ({why})", file=sys.stderr)
            return EXIT_FAILED
        print(
            f"docxy cache rm: {args.image} is not cached (no cache in {directory})", file=sys.stderr
        )
        return EXIT_NOT_FOUND
    except OSError as exc:  # the disk refused (another user's, read-only, EIO): 1, not usage
        print(cannot("open", args.cache_command, directory, exc), file=sys.stderr)
        return EXIT_FAILED
    # Measure against (gc: evict down to) a cap given here (flag, environment, config file)
    # only: the cache directory does not say which one the mirror runs with.
    capped = config.sources.get("cache.max_size", "default") != "default"
    try:
        if args.cache_command == "ls":
            args.upstream_names = upstream_names(config)
            return cmd_ls(cache, args, out)
        if args.cache_command == "du":
            return cmd_du(cache, args, out, capped=capped)
    except BrokenPipeError:  # its reader went away (| head): not the cache's trouble
        raise
    except OSError as exc:  # another user's directories (the mirror's umask 077), EIO
        print(cannot("read", args.cache_command, directory, exc), file=sys.stderr)
        return EXIT_FAILED
    try:
        if args.cache_command == "gc":
            return asyncio.run(cmd_gc(cache, args.verify, out, evict=capped))
        assert image is not None
        return asyncio.run(cmd_rm(cache, image, repo_key(image, config), args.rm_blobs, out))
    except BrokenPipeError:  # its report's reader went away (| head): not the cache's trouble
        raise
    except OSError as exc:  # read-only, another owner's files (EACCES), EIO: one line, no trace
        print(cannot("change", args.cache_command, directory, exc), file=sys.stderr)
        return EXIT_FAILED
