-- A day's partition created after rows of that day went to the default partition.
--
-- The writer never waits for a partition: a row whose day has none goes to events_default
-- (sql/0001). That happens when the partitions made ahead ran out: the hourly maintenance
-- failed for days while events kept arriving, or the clock jumped. Postgres then refuses to
-- create that day's partition ("updated partition constraint for default partition would be
-- violated by some row"), and ingest_ensure_event_partitions raised: the maintenance failed
-- every hour from then on, and the service, which calls it before it serves, no longer
-- started. Now, when the default partition holds rows of the day, the day's table is created
-- on its own, those rows are moved into it, and it is attached as the day's partition, all in
-- the one transaction. The default partition is locked for the move (as the attach would lock
-- it), so no row of the day can land in it between the move and the attach: only writers of
-- rows that have no partition wait, for the moments of the move. Days without such rows are
-- created as before.
CREATE OR REPLACE FUNCTION ingest_ensure_event_partitions(first_day date, last_day date)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    d date := first_day;
    created integer := 0;
    part text;
    lo timestamptz;
    hi timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(7230001);
    WHILE d <= last_day LOOP
        part := 'events_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            lo := d::timestamp AT TIME ZONE 'UTC';
            hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
            IF EXISTS (SELECT 1 FROM events_default WHERE received_at >= lo AND received_at < hi)
            THEN
                LOCK TABLE events_default IN ACCESS EXCLUSIVE MODE;
                EXECUTE format(
                    'CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part
                );
                EXECUTE format(
                    'WITH moved AS (DELETE FROM events_default'
                    ' WHERE received_at >= %L AND received_at < %L RETURNING *)'
                    ' INSERT INTO %I SELECT * FROM moved',
                    lo, hi, part
                );
                -- Builds the partition's indexes and checks the default partition is clear.
                EXECUTE format(
                    'ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                    part, lo, hi
                );
            ELSE
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                    part, lo, hi
                );
            END IF;
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END;
$$;
