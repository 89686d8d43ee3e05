"""Build a tiny GeoIP2-City-shaped .mmdb whose every network maps to a known country and region.

Only documentation ranges (RFC 5737, RFC 3849) are used, so no real person's address appears in
tests. Run: python -m geoip.build_test_mmdb OUT.mmdb
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any, Final

from mmdb_writer import MMDBWriter
from netaddr import IPSet

__all__ = ["DATABASE_TYPE", "TEST_NETWORKS", "build", "main"]

DATABASE_TYPE: Final = "GeoIP2-City"

TEST_NETWORKS: Final[dict[str, tuple[str, str | None]]] = {
    "192.0.2.0/24": ("US", "CA"),
    "198.51.100.0/24": ("GB", "ENG"),
    "2001:db8::/32": ("DE", "BE"),
    "203.0.113.0/25": ("FR", None),
}

# Real GeoNames ids and English names, so the records decode into geoip2 models exactly like
# MaxMind's own City records do.
_CONTINENTS: Final[dict[str, tuple[str, int, str]]] = {
    "US": ("NA", 6255149, "North America"),
    "GB": ("EU", 6255148, "Europe"),
    "DE": ("EU", 6255148, "Europe"),
    "FR": ("EU", 6255148, "Europe"),
}
_COUNTRIES: Final[dict[str, tuple[int, str]]] = {
    "US": (6252001, "United States"),
    "GB": (2635167, "United Kingdom"),
    "DE": (2921044, "Germany"),
    "FR": (3017382, "France"),
}
_SUBDIVISIONS: Final[dict[tuple[str, str], tuple[int, str]]] = {
    ("US", "CA"): (5332921, "California"),
    ("GB", "ENG"): (6269131, "England"),
    ("DE", "BE"): (2950157, "Land Berlin"),
}


def _record(country: str, region: str | None) -> dict[str, Any]:
    continent_code, continent_id, continent_name = _CONTINENTS[country]
    country_id, country_name = _COUNTRIES[country]
    country_entry = {"geoname_id": country_id, "iso_code": country, "names": {"en": country_name}}
    record: dict[str, Any] = {
        "continent": {
            "code": continent_code,
            "geoname_id": continent_id,
            "names": {"en": continent_name},
        },
        "country": country_entry,
        "registered_country": country_entry,
    }
    # MaxMind omits the key entirely (rather than writing []) when a network has no subdivision.
    if region is not None:
        region_id, region_name = _SUBDIVISIONS[(country, region)]
        record["subdivisions"] = [
            {"geoname_id": region_id, "iso_code": region, "names": {"en": region_name}}
        ]
    return record


def build(path: Path) -> Path:
    """Write the test database to path (parents created) and return path."""
    writer = MMDBWriter(
        ip_version=6,
        database_type=DATABASE_TYPE,
        languages=["en"],
        description={"en": "ingest test database: documentation ranges only"},
        # Puts IPv4 networks under ::/96 as MaxMind does, where readers look up IPv4 addresses.
        ipv4_compatible=True,
    )
    for network, (country, region) in TEST_NETWORKS.items():
        writer.insert_network(IPSet([network]), _record(country, region))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build the database and print its networks."""
    parser = argparse.ArgumentParser(
        prog="python -m geoip.build_test_mmdb",
        description="Build the small GeoIP2-City-shaped .mmdb the ingest tests use.",
    )
    parser.add_argument("out", type=Path, help="where to write the .mmdb file")
    args = parser.parse_args(argv)
    out = build(args.out)
    print(f"wrote {out} ({DATABASE_TYPE})")
    for network, (country, region) in TEST_NETWORKS.items():
        version = ipaddress.ip_network(network).version
        print(f"  {network:<18} IPv{version}  {country}  {region or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
