"""Encryption of personal data at rest, with key ids and rotation (docs/SECURITY.md §2).

One keyring per process, built from ``DATA_ENCRYPTION_KEY`` (current) and
``DATA_ENCRYPTION_PREVIOUS_KEYS`` (still readable): a :class:`cryptography.fernet.MultiFernet`
that encrypts with the current key and decrypts with any. A key's id is the first 12 hex digits
of the SHA-256 of the key: it names the key (in a DLQ record's ``encryption-key-id`` header, in
logs) without revealing it.

What is sealed with it: the value of every dead letter (in the outbox and on the DLQ topic) and
of every parked (``pending``) record. The service host configures the keyring at start
(:func:`configure`); code that runs without one (unit tests of the runtime alone) passes values
through unchanged, and a value that is not sealed is read as it is (rows written before this).

    python -m shared.runtime.crypto new-key          # a fresh Fernet key
    python -m shared.runtime.crypto key-id -         # the id of a key read from stdin
    python -m shared.runtime.crypto rotate <service> # re-seal what rests with the current key
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

KEY_ID_HEADER = "encryption-key-id"
# A Fernet token is URL-safe base64 of a version byte 0x80 and a timestamp: it always starts so.
# A parked or dead-lettered record in clear is JSON or arbitrary bytes, which a service tells
# apart by the header (DLQ) or by this prefix (pending rows written before encryption).
TOKEN_PREFIX = b"gAAAAA"


def key_id(key: str) -> str:
    return hashlib.sha256(key.strip().encode("ascii")).hexdigest()[:12]


@dataclass(frozen=True)
class Keyring:
    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a keyring needs at least one key")
        object.__setattr__(self, "_multi", MultiFernet([Fernet(k.encode("ascii")) for k in self.keys]))

    @classmethod
    def of(cls, keys: Sequence[str]) -> Keyring:
        return cls(tuple(k.strip() for k in keys if k.strip()))

    @property
    def fernet(self) -> MultiFernet:
        return self._multi  # type: ignore[attr-defined,no-any-return]  # set in __post_init__ (frozen, slots)

    @property
    def current_id(self) -> str:
        return key_id(self.keys[0])

    @property
    def ids(self) -> list[str]:
        return [key_id(k) for k in self.keys]

    def seal(self, data: bytes) -> bytes:
        return self.fernet.encrypt(data)

    def open(self, token: bytes) -> bytes:
        """The clear bytes; InvalidToken when no key of the ring opens it."""
        return self.fernet.decrypt(token)

    def rotate(self, token: bytes) -> bytes:
        """The same clear bytes sealed with the current key."""
        return self.fernet.rotate(token)


_keyring: Keyring | None = None


def configure(keyring: Keyring | None) -> None:
    """The process's keyring (the service host calls this once at start)."""
    global _keyring
    _keyring = keyring


def current() -> Keyring | None:
    return _keyring


def seal(value: bytes) -> bytes:
    """``value`` sealed with the current key; unchanged when no keyring is configured."""
    return value if _keyring is None else _keyring.seal(value)


def open_stored(value: bytes) -> bytes:
    """A stored value in clear: opened when sealed, as it is when written in clear."""
    if _keyring is None or not value.startswith(TOKEN_PREFIX):
        return value
    try:
        return _keyring.open(value)
    except InvalidToken:
        return value  # a clear value that happens to look like a token


async def rotate_rows(dsn: str, keyring: Keyring, ssl: object = None) -> dict[str, int]:
    """Re-seal with the current key every parked record, every unsent dead letter and (the
    enrollment service) every stored identity of one service database, so a previous key can
    be retired. Returns the rows changed per table."""
    import asyncpg
    import orjson

    from shared.runtime import db

    conn = await asyncpg.connect(dsn, **db.connect_kwargs(ssl))  # type: ignore[arg-type]  # options by name, checked by asyncpg
    changed = {"pending": 0, "outbox": 0, "trainee": 0}
    try:
        async with conn.transaction():
            if await conn.fetchval("SELECT to_regclass('trainee') IS NOT NULL"):
                rows = await conn.fetch(
                    "SELECT person_id, national_id_enc, name_enc FROM trainee FOR UPDATE")
                await conn.executemany(
                    "UPDATE trainee SET national_id_enc = $2, name_enc = $3 WHERE person_id = $1",
                    [(r["person_id"], keyring.rotate(bytes(r["national_id_enc"])),
                      keyring.rotate(bytes(r["name_enc"]))) for r in rows],
                )
                changed["trainee"] = len(rows)
            for row in await conn.fetch("SELECT seq, value FROM pending FOR UPDATE"):
                value = bytes(row["value"])
                if not value.startswith(TOKEN_PREFIX):
                    fresh = keyring.seal(value)
                else:
                    fresh = keyring.rotate(value)
                await conn.execute("UPDATE pending SET value = $2 WHERE seq = $1", row["seq"], fresh)
                changed["pending"] += 1
            for row in await conn.fetch(
                "SELECT seq, value, headers FROM outbox WHERE event_type = 'dead_letter' FOR UPDATE"
            ):
                headers = orjson.loads(row["headers"])
                if not any(k == KEY_ID_HEADER for k, _ in headers):
                    continue  # written in clear before encryption: it is published as it is
                headers = [[k, keyring.current_id if k == KEY_ID_HEADER else v] for k, v in headers]
                await conn.execute(
                    "UPDATE outbox SET value = $2, headers = $3 WHERE seq = $1", row["seq"],
                    keyring.rotate(bytes(row["value"])), orjson.dumps(headers).decode(),
                )
                changed["outbox"] += 1
    finally:
        await conn.close()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.runtime.crypto",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("new-key", help="print a fresh Fernet key")
    kid = commands.add_parser("key-id", help="print the id of a key")
    kid.add_argument("key", help='the key, or "-" to read it from stdin')
    rotate = commands.add_parser(
        "rotate", help="re-seal a service's parked records, unsent dead letters and identities "
        "with the current DATA_ENCRYPTION_KEY (DATA_ENCRYPTION_PREVIOUS_KEYS open the old ones)")
    rotate.add_argument("service", choices=["enrollment", "assessment", "subsidy"])
    args = parser.parse_args(argv)
    if args.command == "new-key":
        print(Fernet.generate_key().decode())
        return 0
    if args.command == "key-id":
        key = sys.stdin.readline().strip() if args.key == "-" else args.key
        print(key_id(key))
        return 0
    from shared.runtime.service import database_ssl, settings_class

    settings = settings_class(args.service)()
    problems = settings.key_problems()
    if problems:
        print("; ".join(problems), file=sys.stderr)
        return 2
    keyring = Keyring.of(settings.data_keys)
    changed = asyncio.run(rotate_rows(settings.database_url, keyring, database_ssl(settings)))
    print(f"{args.service}: re-sealed with key {keyring.current_id}: "
          f"{changed['pending']} parked records, {changed['outbox']} unsent dead letters, "
          f"{changed['trainee']} identities")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
