"""``docxy users``, ``docxy clients`` and ``docxy tokens``: the mirror's own accounts.

    docxy users add NAME [--password-stdin]    add or change a user (password prompted)
    docxy users rm NAME                        remove a user; their tokens stop working
    docxy users list
    docxy clients add NAME [--out DIR]         a client certificate: client.cert, client.key, ca.crt
                                               (in auth.dir/kits/NAME without --out)
    docxy clients rm NAME                      revoke it
    docxy clients list
    docxy tokens rotate                        a new signing key; the old one verifies for the grace

They work on the files in ``auth.dir`` / ``auth.users_file``; a running mirror picks up the
changes by itself. Run as root (``docker exec -u 0 <container> docxy users add``), they write
those files as the owner of the directory they are in (the image's ``docxy`` user): files of
root's, mode 600, were unreadable to the mirror, which answered 503 for every login.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from docxy.cli.exits import EXIT_FAILED
from docxy.cli.options import ConfigLoader, add_config_arguments
from docxy.cli.owner import Owner

#: Where ``docxy clients add NAME`` puts the kit without ``--out``: ``auth.dir/kits/NAME``.
KITS = "kits"

if TYPE_CHECKING:
    from docxy.access.clientca import ClientCA
    from docxy.access.users import UsersFile


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # `--config` and `--set` after the action too (`docxy users add alice --config m.toml`,
    # as `docxy cache ls --config m.toml` takes them): not given there, they leave those before
    # alone. `--set` after it goes to a list of its own (a subparser's list would replace the
    # one given before the action), joined to that one by run().
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    after.add_argument(
        "--set", dest="set_after", action="append", default=[], help=argparse.SUPPRESS
    )

    def command(name: str, help: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        parser = commands.add_parser(name, help=help)
        add_config_arguments(parser)
        parser.set_defaults(handler=run, group=name)
        return parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    users = command("users", "the mirror's users (auth.mode = users)")
    add = users.add_parser("add", parents=[after], help="add a user or change a password")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    users.add_parser("rm", parents=[after], help="remove a user").add_argument("name")
    users.add_parser("list", parents=[after], help="list the users")

    clients = command("clients", "client certificates from the mirror's own CA")
    issue = clients.add_parser("add", parents=[after], help="issue a client certificate")
    issue.add_argument("name")
    issue.add_argument(
        "--out",
        type=Path,
        help=f"directory for the files (default: auth.dir/{KITS}/NAME, the mirror's volume)",
    )
    revoke = clients.add_parser("rm", parents=[after], help="revoke a client's certificate")
    revoke.add_argument("name")
    clients.add_parser("list", parents=[after], help="list the clients")

    tokens = command("tokens", "the token signing key")
    tokens.add_parser(
        "rotate", parents=[after], help="sign with a new key; the old one verifies for the grace"
    )


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    try:
        first = getpass.getpass(f"password for {args.name}: ")
        again = getpass.getpass("again: ")
    except EOFError:  # no terminal and nothing on stdin (docker exec without -it)
        raise ValueError(
            "no password given: run it on a terminal (docker exec -it), or pipe the password "
            "in with --password-stdin"
        ) from None
    if again != first:
        raise ValueError("the passwords differ")
    return first


def run(args: argparse.Namespace, load: ConfigLoader) -> int:
    # Imported here: every docxy command (`docxy serve` too) registers these subcommands, and
    # argon2, bcrypt and cryptography would stay in the mirror's memory (docxy.access.gate).
    from docxy.access.clientca import CA_CERT, CA_KEY, CA_LOCK, CLIENTS, ClientCA
    from docxy.access.keys import CURRENT, PREVIOUS, KeyRing, TokenKeyError
    from docxy.access.users import UsersFile, UsersFileError

    args.set = [*args.set, *args.set_after]  # before the action, then after it: the last wins
    config = load(args)  # a ConfigError is docxy's (main) to report
    where = config.auth.users_file.parent if args.group == "users" else config.auth.dir
    owner = Owner.of(where, mirror=config.cache.dir)
    try:
        if args.group == "users":
            owner.hand_over(where, [config.auth.users_file.name])
        else:
            owner.hand_over(where, [CURRENT, PREVIOUS, CA_CERT, CA_KEY, CA_LOCK, CLIENTS])
        with owner.acting():
            if args.group == "users":
                return _users(args, UsersFile(config.auth.users_file))
            if args.group == "clients":
                return _clients(args, ClientCA(config.auth.dir), owner)
            kid = KeyRing(config.auth.dir, config.auth.key_grace).rotate()
        # the previous key honours only tokens it signed before now, for their lifetime
        left = min(config.auth.key_grace, config.auth.token_ttl)
        print(f"new signing key {kid}; tokens the previous one signed count for {left:g}s at most")
        return 0
    except (ValueError, UsersFileError, OSError, TokenKeyError) as exc:
        print(f"docxy {args.group} {args.action}: {exc}{owner.note}", file=sys.stderr)
        return EXIT_FAILED


def _users(args: argparse.Namespace, users: UsersFile) -> int:
    if args.action == "list":
        for name in users.names():
            print(name)
        return 0
    if args.action == "rm":
        if not users.remove(args.name):
            print(f"docxy users rm: no user {args.name}", file=sys.stderr)
            return EXIT_FAILED
        print(f"removed {args.name}")
        return 0
    new = users.add(args.name, _password(args))
    print(f"{'added' if new else 'changed the password of'} {args.name} in {users.path}")
    return 0


def _remove_kit(kit: Path) -> bool:
    """Remove the kit ``clients add`` left in ``kit`` (its files and any pending one a cut
    write left, then the directory if nothing else is in it); True if it removed any. A file
    of the user's beside them stays, and the directory with it; one it may not delete is said
    on stderr (the certificate is revoked all the same)."""
    from docxy.access.clientca import CA_CERT, KIT_CERT, KIT_KEY
    from docxy.tls.files import pending_path

    names = [CA_CERT, KIT_CERT, KIT_KEY]
    paths = [kit / name for name in names] + [pending_path(kit / name) for name in names]
    found = False
    for path in paths:
        try:
            path.unlink()
            found = True
        except FileNotFoundError:
            pass
        except OSError as exc:  # the revoke stands: say what is left, and go on
            print(f"docxy clients rm: {path} left: {exc.strerror or exc}", file=sys.stderr)
    with contextlib.suppress(OSError):  # not there, or not empty: the user's files stay
        kit.rmdir()
    return found


def _clients(args: argparse.Namespace, ca: ClientCA, owner: Owner) -> int:
    if args.action == "list":
        for entry in sorted(ca.entries().values(), key=lambda e: e.name):
            print(f"{entry.name}\tserial {entry.serial}\tvalid until {entry.not_after}")
        return 0
    if args.action == "rm":
        if not ca.revoke(args.name):
            print(f"docxy clients rm: no client {args.name}", file=sys.stderr)
            return EXIT_FAILED
        print(f"revoked {args.name}")
        kit = ca.dir / KITS / args.name
        if _remove_kit(kit):
            print(f"removed its kit {kit}")
        return 0
    if args.out is None:  # beside the CA, as its owner (in the image: the certs volume)
        out = ca.dir / KITS / args.name
        entry = ca.issue(args.name, out)
    else:  # where the one who runs it asked, as them
        out = args.out
        entry = ca.issue(args.name, out, kit_as=owner.invoker)
    print(f"issued {entry.name} (serial {entry.serial}): {out}/client.cert, client.key, ca.crt")
    return 0
