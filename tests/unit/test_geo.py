"""ingest.geo against the generated test database and the bundled 2018 GeoLite2 City."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geoip2.database
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geoip.build_test_mmdb import DATABASE_TYPE, TEST_NETWORKS, build
from ingest import geo as geo_module
from ingest.geo import GeoDatabaseError, GeoLookup, GeoResult

# One concrete address inside each TEST_NETWORKS entry.
INSIDE = {
    "192.0.2.0/24": "192.0.2.10",
    "198.51.100.0/24": "198.51.100.250",
    "2001:db8::/32": "2001:db8:1234::5",
    "203.0.113.0/25": "203.0.113.5",
}
MISSES = ["203.0.113.200", "10.0.0.1", "2001:db9::1", "::ffff:10.0.0.1"]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def write_mmdb(
    path: Path, records: dict[str, Any], *, ip_version: int = 6, database_type: str = "Test-City"
) -> Path:
    """Write a one-off database holding exactly the given records."""
    writer = MMDBWriter(
        ip_version=ip_version, database_type=database_type, ipv4_compatible=ip_version == 6
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def test_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("geoip") / "test-city.mmdb")


@pytest.fixture
def geo(test_db: Path) -> Iterator[GeoLookup]:
    lookup = GeoLookup.open(test_db)
    yield lookup
    lookup.close()


@pytest.fixture(scope="module")
def bundled() -> Iterator[GeoLookup]:
    lookup = GeoLookup.open(None)
    yield lookup
    lookup.close()


class TestTestDatabase:
    def test_every_network_has_an_address_under_test(self) -> None:
        assert set(INSIDE) == set(TEST_NETWORKS)
        for network, address in INSIDE.items():
            assert ip(address) in ipaddress.ip_network(network)

    def test_is_a_valid_city_database_for_geoip2(self, test_db: Path) -> None:
        """The official geoip2 City reader accepts the file and its records."""
        with geoip2.database.Reader(str(test_db)) as reader:
            city = reader.city("192.0.2.10")
            assert city.country.iso_code == "US"
            assert city.subdivisions.most_specific.iso_code == "CA"
            assert city.continent.code == "NA"
            assert reader.metadata().ip_version == 6


class TestLookup:
    @pytest.mark.parametrize("network", list(TEST_NETWORKS))
    def test_resolves_each_network(self, geo: GeoLookup, network: str) -> None:
        country, region = TEST_NETWORKS[network]
        assert geo.lookup(ip(INSIDE[network])) == GeoResult(country=country, region=region)

    def test_ipv4_mapped_ipv6_resolves_like_ipv4(self, geo: GeoLookup) -> None:
        assert geo.lookup(ip("::ffff:198.51.100.7")) == GeoResult(country="GB", region="ENG")

    def test_country_without_subdivisions_has_no_region(self, geo: GeoLookup) -> None:
        assert geo.lookup(ip("203.0.113.127")) == GeoResult(country="FR", region=None)

    @pytest.mark.parametrize("address", MISSES)
    def test_miss_is_none(self, geo: GeoLookup, address: str) -> None:
        assert geo.lookup(ip(address)) is None

    def test_repeated_lookups_agree(self, geo: GeoLookup) -> None:
        """The cache returns the same answers, hits and misses alike."""
        first = [geo.lookup(ip(a)) for a in [*INSIDE.values(), *MISSES]]
        second = [geo.lookup(ip(a)) for a in [*INSIDE.values(), *MISSES]]
        assert first == second


class TestOddRecords:
    """Records that do not look like MaxMind's never make lookup raise."""

    @pytest.fixture
    def odd(self, tmp_path: Path) -> Iterator[GeoLookup]:
        path = write_mmdb(
            tmp_path / "odd.mmdb",
            {
                "192.0.2.0/28": {"registered_country": {"iso_code": "NL"}},
                "192.0.2.16/28": {"country": {"names": {"en": "Nowhere"}}},
                "192.0.2.32/28": {"country": {"iso_code": "US"}, "subdivisions": []},
                "192.0.2.48/28": {"country": {"iso_code": "US"}, "subdivisions": [{"x": 1}]},
                "192.0.2.64/28": {"country": "US", "subdivisions": "CA"},
                "192.0.2.80/28": ["not", "a", "map"],
                "192.0.2.96/28": {"country": {"iso_code": 7}},
            },
        )
        lookup = GeoLookup.open(path)
        yield lookup
        lookup.close()

    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("192.0.2.1", GeoResult(country="NL", region=None)),
            ("192.0.2.17", None),
            ("192.0.2.33", GeoResult(country="US", region=None)),
            ("192.0.2.49", GeoResult(country="US", region=None)),
            ("192.0.2.65", None),
            ("192.0.2.81", None),
            ("192.0.2.97", None),
        ],
    )
    def test_missing_or_malformed_keys(
        self, odd: GeoLookup, address: str, expected: GeoResult | None
    ) -> None:
        assert odd.lookup(ip(address)) == expected

    def test_ipv6_against_ipv4_only_database_is_a_miss(self, tmp_path: Path) -> None:
        path = write_mmdb(
            tmp_path / "v4.mmdb", {"192.0.2.0/24": {"country": {"iso_code": "US"}}}, ip_version=4
        )
        lookup = GeoLookup.open(path)
        try:
            assert lookup.lookup(ip("192.0.2.1")) == GeoResult(country="US", region=None)
            assert lookup.lookup(ip("::ffff:192.0.2.1")) == GeoResult(country="US", region=None)
            assert lookup.lookup(ip("2001:db8::1")) is None
        finally:
            lookup.close()


class TestCache:
    def test_stays_bounded(self, geo: GeoLookup, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(geo_module, "CACHE_MAX_ENTRIES", 4)
        for host in range(1, 20):
            assert geo.lookup(ip(f"192.0.2.{host}")) == GeoResult(country="US", region="CA")
            assert len(geo._cache) <= 4

    def test_mapped_and_plain_ipv4_share_an_entry(self, geo: GeoLookup) -> None:
        geo.lookup(ip("192.0.2.1"))
        geo.lookup(ip("::ffff:192.0.2.1"))
        assert len(geo._cache) == 1


class TestMetadata:
    def test_test_database_metadata(self, geo: GeoLookup, test_db: Path) -> None:
        assert geo.path == test_db
        assert geo.database_type == DATABASE_TYPE
        assert geo.is_bundled is False
        # Built moments ago; a day either side absorbs a build that straddles UTC midnight.
        today = datetime.datetime.now(tz=datetime.UTC).date()
        assert abs(geo.build_date - today) <= datetime.timedelta(days=1)


class TestOpenErrors:
    def test_missing_file(self, tmp_path: Path) -> None:
        path = tmp_path / "absent.mmdb"
        with pytest.raises(GeoDatabaseError, match="no such file") as excinfo:
            GeoLookup.open(path)
        assert str(path) in str(excinfo.value)

    def test_not_an_mmdb_file(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.mmdb"
        path.write_text("this is not a MaxMind database\n" * 50)
        with pytest.raises(GeoDatabaseError, match="not a valid MaxMind DB") as excinfo:
            GeoLookup.open(path)
        assert str(path) in str(excinfo.value)

    def test_empty_file(self, tmp_path: Path) -> None:
        path = tmp_path / "empty.mmdb"
        path.touch()
        with pytest.raises(GeoDatabaseError, match="not a valid MaxMind DB") as excinfo:
            GeoLookup.open(path)
        assert str(path) in str(excinfo.value)

    def test_database_without_country_data(self, tmp_path: Path) -> None:
        """An ASN database would turn every event into a miss, so it is refused."""
        path = write_mmdb(
            tmp_path / "asn.mmdb",
            {"192.0.2.0/24": {"autonomous_system_number": 64496}},
            database_type="GeoLite2-ASN",
        )
        with pytest.raises(GeoDatabaseError, match="GeoLite2-ASN") as excinfo:
            GeoLookup.open(path)
        assert str(path) in str(excinfo.value)

    def test_directory(self, tmp_path: Path) -> None:
        with pytest.raises(GeoDatabaseError, match="not a regular file") as excinfo:
            GeoLookup.open(tmp_path)
        assert str(tmp_path) in str(excinfo.value)


class TestBundledDatabase:
    def test_metadata(self, bundled: GeoLookup) -> None:
        assert bundled.is_bundled is True
        assert bundled.database_type == "GeoLite2-City"
        assert bundled.build_date.year == 2018

    def test_resolves_a_well_known_address(self, bundled: GeoLookup) -> None:
        """The 2018 file places 8.8.8.8 in the US with no subdivision."""
        assert bundled.lookup(ip("8.8.8.8")) == GeoResult(country="US", region=None)

    def test_same_file_by_explicit_path_is_bundled(self, bundled: GeoLookup) -> None:
        explicit = GeoLookup.open(bundled.path)
        try:
            assert explicit.is_bundled is True
        finally:
            explicit.close()
