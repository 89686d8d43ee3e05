-- Tenancy, keys, and the event store.
-- What is deliberately absent: no column for a raw email, phone, IP or device id, and no key
-- plaintext (api_keys keeps only the SHA-256 of each key).

CREATE TABLE organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id               uuid PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name             text NOT NULL,
    -- ISO 3166 alpha-2: national phone numbers are read as this country's (libphonenumber).
    default_country  text CHECK (default_country ~ '^[A-Z]{2}$'),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX projects_org_id_idx ON projects (org_id);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY,
    org_id          uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    project_id      uuid REFERENCES projects (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('write', 'secret')),
    digest          bytea NOT NULL,
    display_prefix  text NOT NULL,
    -- A write key used only from the partner's servers: its context.ip is trusted.
    is_server_side  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CONSTRAINT api_keys_digest_key UNIQUE (digest),
    CONSTRAINT api_keys_write_has_project CHECK ((kind = 'write') = (project_id IS NOT NULL))
);
CREATE INDEX api_keys_org_id_idx ON api_keys (org_id);

-- Events, partitioned by day of received_at (UTC) so retention drops whole partitions.
CREATE TABLE events (
    project_id           uuid NOT NULL,
    received_at          timestamptz NOT NULL,
    message_id           text NOT NULL,
    type                 text NOT NULL
        CHECK (type IN ('track', 'identify', 'page', 'screen', 'group', 'alias')),
    event                text,
    user_id              text,
    anonymous_id         text,
    "timestamp"          timestamptz NOT NULL,
    original_timestamp   timestamptz,
    sent_at              timestamptz,
    app_id               text,
    country              text,
    region               text,
    email_sha256         text,
    email_google_sha256  text,
    phone_sha256         text,
    phone_e164_sha256    text,
    properties           jsonb NOT NULL DEFAULT '{}',
    traits               jsonb NOT NULL DEFAULT '{}',
    context              jsonb NOT NULL DEFAULT '{}'
) PARTITION BY RANGE (received_at);

-- Catches a row whose day has no partition yet, so a late partition job never fails a write.
CREATE TABLE events_default PARTITION OF events DEFAULT;

CREATE INDEX events_user_idx ON events (project_id, user_id, received_at);
CREATE INDEX events_anonymous_idx ON events (project_id, anonymous_id, received_at);

-- Dedup lives outside the partitioned table: a UNIQUE constraint there would have to include
-- received_at, so a retry landing in the next day's partition would be stored twice.
CREATE TABLE event_dedup (
    project_id   uuid NOT NULL,
    message_id   text NOT NULL,
    received_at  timestamptz NOT NULL,
    PRIMARY KEY (project_id, message_id)
);
CREATE INDEX event_dedup_received_at_idx ON event_dedup (received_at);

-- Creates the daily partitions of events covering [first_day, last_day]. Several workers call
-- it at start; the transaction-scoped advisory lock keeps their CREATE TABLEs from racing.
CREATE FUNCTION ingest_ensure_event_partitions(first_day date, last_day date)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    d date := first_day;
    created integer := 0;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(7230001);
    WHILE d <= last_day LOOP
        part := 'events_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                part,
                (d::timestamp AT TIME ZONE 'UTC'),
                ((d + 1)::timestamp AT TIME ZONE 'UTC')
            );
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END;
$$;
