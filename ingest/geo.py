"""Resolve a client IP to a country and first-level region from a MaxMind City database.

The IP itself is never kept: callers get only a GeoResult, and nothing here logs an address.
"""

from __future__ import annotations

import datetime
import ipaddress
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import maxminddb
from _maxminddb_geolite2 import geolite2_database

__all__ = ["CACHE_MAX_ENTRIES", "GeoDatabaseError", "GeoLookup", "GeoResult"]

CACHE_MAX_ENTRIES: Final = 65_536

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class GeoDatabaseError(Exception):
    """The GeoIP database file is missing, unreadable, or not a usable MaxMind DB."""


@dataclass(frozen=True, slots=True)
class GeoResult:
    """Where an IP is, to the precision the ingest schema keeps."""

    country: str | None
    """ISO 3166-1 alpha-2 code, e.g. "US"."""
    region: str | None
    """ISO 3166-2 code of the first (largest) subdivision without the country, e.g. "CA"."""


class GeoLookup:
    """An open MaxMind database plus a small in-process cache of recent answers."""

    path: Path
    build_date: datetime.date
    database_type: str
    is_bundled: bool

    def __init__(self, path: Path, reader: maxminddb.Reader) -> None:
        """Wrap an already open reader; use GeoLookup.open() instead."""
        metadata = reader.metadata()
        self.path = path
        self.build_date = datetime.datetime.fromtimestamp(
            metadata.build_epoch, tz=datetime.UTC
        ).date()
        self.database_type = metadata.database_type
        self.is_bundled = _same_file(path, Path(geolite2_database()))
        self._reader = reader
        self._ipv4_only = metadata.ip_version == 4
        # Keyed by address, but lives only in process memory: never persisted or logged, bounded,
        # and dropped on close(). One device sends many events from one address, so this saves
        # a tree walk and a record decode per event.
        self._cache: dict[IPAddress, GeoResult | None] = {}

    @classmethod
    def open(cls, path: Path | None) -> GeoLookup:
        """Open the database at path, or the bundled 2018 GeoLite2 City when path is None."""
        db_path = Path(geolite2_database()) if path is None else Path(path)
        try:
            # Checked first because maxminddb reports a directory as "not a valid MaxMind DB".
            if not stat.S_ISREG(db_path.stat().st_mode):
                raise GeoDatabaseError(f"GeoIP database {db_path}: not a regular file")
            reader = maxminddb.open_database(db_path, maxminddb.MODE_AUTO)
        except FileNotFoundError as exc:
            raise GeoDatabaseError(f"GeoIP database {db_path}: no such file") from exc
        except PermissionError as exc:
            raise GeoDatabaseError(
                f"GeoIP database {db_path}: cannot be read (permission denied)"
            ) from exc
        except OSError as exc:
            raise GeoDatabaseError(
                f"GeoIP database {db_path}: cannot be read ({exc.strerror or exc})"
            ) from exc
        # The pure-Python reader raises TypeError/ValueError on malformed metadata, the C
        # extension InvalidDatabaseError; all mean the same thing to an operator.
        except (maxminddb.InvalidDatabaseError, TypeError, ValueError) as exc:
            raise GeoDatabaseError(
                f"GeoIP database {db_path}: not a valid MaxMind DB (.mmdb) file"
            ) from exc

        database_type = reader.metadata().database_type
        # An ASN or anonymous-IP database opens fine but has no country in any record, which
        # would silently turn every event into a miss.
        if "city" not in database_type.lower() and "country" not in database_type.lower():
            reader.close()
            raise GeoDatabaseError(
                f"GeoIP database {db_path}: database type {database_type!r} has no country "
                "data; use a GeoLite2/GeoIP2 City (or Country) database"
            )
        return cls(db_path, reader)

    def lookup(self, ip: IPAddress) -> GeoResult | None:
        """Return the country and region for ip, or None if the database has no country for it."""
        if ip.version == 6:
            # MaxMind's own files alias ::ffff:0:0/96 onto the IPv4 tree but other writers do
            # not, so unmap here to get the same answer from every database.
            mapped = ip.ipv4_mapped
            if mapped is not None:
                ip = mapped
        try:
            return self._cache[ip]
        except KeyError:
            pass
        result = self._resolve(ip)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            # Clearing beats true LRU here: no per-hit bookkeeping on the hot path, and the
            # working set refills within seconds.
            self._cache.clear()
        self._cache[ip] = result
        return result

    def _resolve(self, ip: IPAddress) -> GeoResult | None:
        if ip.version == 6 and self._ipv4_only:
            # maxminddb raises ValueError with the address in the message; a miss is the truth.
            return None
        try:
            record = self._reader.get(ip)
        except maxminddb.InvalidDatabaseError as exc:
            # from None: the library's message may carry the looked-up address.
            raise GeoDatabaseError(
                f"GeoIP database {self.path}: corrupt data ({type(exc).__name__})"
            ) from None
        if not isinstance(record, dict):
            return None
        country = _iso_code(record.get("country")) or _iso_code(record.get("registered_country"))
        if country is None:
            return None
        region: str | None = None
        subdivisions = record.get("subdivisions")
        if isinstance(subdivisions, list) and subdivisions:
            region = _iso_code(subdivisions[0])
        return GeoResult(country=country, region=region)

    def close(self) -> None:
        """Release the database file and forget cached answers."""
        self._cache.clear()
        self._reader.close()


def _iso_code(value: object) -> str | None:
    if isinstance(value, dict):
        code = value.get("iso_code")
        if isinstance(code, str) and code:
            return code
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
