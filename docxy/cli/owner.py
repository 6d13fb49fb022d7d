"""Root acting as the owner of the directory a command writes in.

``docker exec -u 0 <container> docxy ...`` runs the CLI as root beside a mirror that runs as the
image's ``docxy`` user: what root made there (files, directories, locks) was root's, and the
mirror could not read or write it. The access CLI (``docxy users|clients|tokens``), the cache
CLI (``docxy cache``) and ``docxy certs obtain|renew`` (certbot's directory: certbot itself is
started as that user outright, :func:`docxy.tls.certs.run_certbot`) act as the owner of their
directory instead.

Root acts as another user only when that user is the mirror's: the owner of ``cache.dir``,
which the mirror makes and writes at every start (the image's ``docxy`` in the appliance). On
a host install whose mirror runs as root that directory is root's, and root stays root even
where its directories lie in a login user's (``/home/op/docxy/certs``): their keys and password
hashes are never handed to that user.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


class Owner:
    """Root acting as the owner of the directory the files go in (its nearest existing one:
    ``auth.dir`` is made on first use), through the effective uid and gid alone, so that what
    it writes (and the directories and locks it makes) is that user's from the start, where
    that user is the mirror's (see the module). Anyone else, or a directory of root's, or of
    another user than the mirror's, acts as themselves."""

    def __init__(self, uid: int, gid: int, path: Path) -> None:
        self.uid, self.gid, self.path = uid, gid, path
        self.acted = False  # switched to the owner at least once (an error then says so)

    @classmethod
    def of(cls, directory: Path, *, mirror: Path | None) -> Owner:
        """Whom root acts as in `directory`; `mirror` is ``cache.dir`` (None: not known)."""
        if os.geteuid() != 0:
            return cls(0, 0, directory)
        found = [(path, os.stat(path)) for path in (directory, *directory.parents) if path.exists()]
        if not found:
            return cls(0, 0, directory)
        (path, st), *up = found
        if st.st_uid == 0 and path == directory and up and up[0][1].st_uid != 0:
            # made by a root run before this owner was kept, in a directory of the mirror's
            path, st = up[0]
        if st.st_uid == 0 or _mirrors_user(mirror, st.st_uid, directory, path):
            return cls(st.st_uid, st.st_gid, path)
        return cls(0, 0, directory)

    def hand_over(self, directory: Path, names: list[str]) -> None:
        """Give the owner what a root run made here before it was kept: `directory` and these
        files in it, where they are root's (the mirror could not read them)."""
        if not self.switches:
            return
        for path in (directory, *(directory / name for name in names)):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            kind = stat.S_ISDIR if path == directory else stat.S_ISREG  # lstat's: no link
            if st.st_uid == 0 and kind(st.st_mode):
                try:
                    # Not through a link: the directory is the mirror user's, who could swap
                    # the file for a link to one of root's between the lstat and this.
                    os.chown(path, self.uid, self.gid, follow_symlinks=False)
                except OSError as exc:  # a root without CAP_CHOWN: the mirror still cannot read it
                    print(
                        f"docxy: {path} is root's and could not be handed over "
                        f"({exc.strerror or exc}): chown {self.uid}:{self.gid} it",
                        file=sys.stderr,
                    )
                    continue
                print(f"docxy: {path} was root's: now uid {self.uid}'s", file=sys.stderr)

    def hand_over_tree(self, top: Path) -> None:
        """Give the owner everything under `top` (and `top`) that root runs left root's:
        certbot's directory (accounts, archive, live, renewal, logs, work) after a root
        ``docxy certs renew``, where the renewer (the mirror's user) then failed at every run.

        Directories, files and links, never through a link (the tree is the owner's, who could
        swap a directory for a link to one of root's: :func:`os.fwalk` does not follow them and
        each change is made relative to its directory's descriptor). A file with other hard
        links is not handed over (it may be one of root's elsewhere): it is named, with the
        one command that would."""
        if not self.switches:
            return
        try:
            st = os.lstat(top)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        handed, kept = 0, []
        if st.st_uid == 0:
            try:
                os.chown(top, self.uid, self.gid, follow_symlinks=False)
                handed += 1
            except OSError as exc:
                kept.append(f"{top} ({exc.strerror or exc})")
        for where, dirs, files, fd in os.fwalk(top, follow_symlinks=False):
            for name in (*dirs, *files):
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if st.st_uid != 0:
                    continue
                mode = st.st_mode
                if stat.S_ISREG(mode) and st.st_nlink > 1:
                    kept.append(f"{os.path.join(where, name)} (hard-linked elsewhere)")
                    continue
                if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    continue
                try:
                    os.chown(name, self.uid, self.gid, dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    kept.append(f"{os.path.join(where, name)} ({exc.strerror or exc})")
                    continue
                handed += 1
        if handed:
            print(
                f"docxy: {handed} path(s) in {top} were root's (an earlier root run): now uid "
                f"{self.uid}'s",
                file=sys.stderr,
            )
        for each in kept:
            print(
                f"docxy: {each} is root's and was not handed over: "
                f"chown -R {self.uid}:{self.gid} {top}",
                file=sys.stderr,
            )

    @property
    def switches(self) -> bool:
        return os.getuid() == 0 and self.uid != 0

    @property
    def note(self) -> str:
        if not self.acted:
            return ""
        return f" (run as root, written as the owner of {self.path}, uid {self.uid})"

    @contextmanager
    def acting(self) -> Iterator[None]:
        if not self.switches:
            yield
            return
        groups, egid = os.getgroups(), os.getegid()
        try:
            os.setgroups([self.gid])
            os.setegid(self.gid)
            os.seteuid(self.uid)
        except PermissionError:  # a root without CAP_SETUID/CAP_SETGID (cap_drop)
            with suppress(OSError):  # as it was, as far as it changed
                os.setegid(egid)
                os.setgroups(groups)
            raise PermissionError(
                f"cannot act as uid {self.uid}, the owner of {self.path} (this root may not "
                f"change its uid): run it as that user (docker exec -u {self.uid}:{self.gid})"
            ) from None
        self.acted = True
        try:
            yield
        finally:
            os.seteuid(0)
            os.setegid(egid)
            os.setgroups(groups)

    @contextmanager
    def invoker(self) -> Iterator[None]:
        """Root again inside :meth:`acting` (a client's kit goes where root asked for it)."""
        if not self.switches:
            yield
            return
        os.seteuid(0)
        os.setegid(0)
        try:
            yield
        finally:
            os.setegid(self.gid)
            os.seteuid(self.uid)


#: What :func:`_mirrors_user` said already (one line per directory and owner, not one per
#: :meth:`Owner.of` call: a certs run asks for up to four directories).
_SAID: set[tuple[str, int]] = set()


def _mirrors_user(mirror: Path | None, uid: int, directory: Path, path: Path) -> bool:
    """Whether `uid` (the owner of `path`, where root would write `directory` as it) is the
    mirror's user: the owner of ``cache.dir`` (`mirror`), through a link (a cache on a larger
    disk): whoever may write the directory it is in could put a directory of theirs there
    as well as a link, so not following one would protect nothing. When it is not, or there
    is no cache.dir yet (the mirror never started), root writes as root, saying so once: a
    renewer run as another user than the mirror's then cannot read what root wrote."""
    if mirror is None:
        return False
    try:
        st = os.stat(mirror)
    except OSError:
        _say_once(
            directory,
            uid,
            f"docxy: writing {directory} as root, not as uid {uid} (the owner of {path}): "
            f"cache.dir {mirror} is not there to say who the mirror runs as. If it runs as uid "
            f"{uid}, start it once (it makes cache.dir) and run this again",
        )
        return False
    if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
        return True
    _say_once(
        directory,
        uid,
        f"docxy: writing {directory} as root, not as uid {uid} (the owner of {path}): root "
        f"acts only as the mirror's user, the owner of cache.dir {mirror} (uid {st.st_uid}). "
        f"If uid {uid} runs the renewer or the mirror, run this as that user instead",
    )
    return False


def _say_once(directory: Path, uid: int, line: str) -> None:
    if (str(directory), uid) not in _SAID:
        _SAID.add((str(directory), uid))
        print(line, file=sys.stderr)
