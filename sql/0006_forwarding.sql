-- Forwarding: per-project destinations, the outbox of events waiting for them, and a record of
-- what was delivered (an erasure's receipt lists it, so the partner can pass the erasure on,
-- GDPR Art. 19). Device ids live in the outbox only: never in events, gone once delivered.

-- The forward queue's retention, per project (like events_retention_days, sql/0003): how long
-- a row may wait for delivery before it goes dead and loses its device ids, and how long dead
-- letters are kept for a retry.
ALTER TABLE projects
    ADD COLUMN forward_queue_days integer NOT NULL DEFAULT 1
        CONSTRAINT projects_forward_queue_days_check CHECK (forward_queue_days BETWEEN 1 AND 30),
    ADD COLUMN dead_letter_days integer NOT NULL DEFAULT 7
        CONSTRAINT projects_dead_letter_days_check CHECK (dead_letter_days BETWEEN 1 AND 3650);

-- A destination is addressed through its project, like everything a partner owns. No foreign
-- key to projects: a project's rows are deleted in short batches after the project row
-- (Store.delete_project_data), as every other table of it is.
CREATE TABLE destinations (
    project_id   uuid NOT NULL,
    id           uuid NOT NULL,
    type         text NOT NULL CHECK (type IN ('webhook', 'conversions_api')),
    name         text NOT NULL,
    url          text NOT NULL,
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'paused')),
    -- Event types sent to it; NULL sends every type.
    event_types  text[],
    -- The webhook's signing secret, or the conversions API's access token (never shown again).
    secret       text,
    -- After a rotation with a grace period, deliveries are signed with both secrets until then.
    previous_secret        text,
    previous_secret_until  timestamptz,
    -- Type-specific options (conversions API: action_source, test_event_code).
    settings     jsonb NOT NULL DEFAULT '{}',
    -- The receiver asked us to wait (429/503 with Retry-After, or backoff after failures):
    -- nothing is sent to it before this time. NULL: it did not.
    retry_at     timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, id)
);

-- One row per (event, destination) still to deliver, or dead. The event's columns are copied
-- from the row stored in events, in the same transaction: delivery reads this table alone
-- (events has no index on message_id, and needs none on its write path).
CREATE TABLE outbox (
    project_id           uuid NOT NULL,
    id                   bigint GENERATED ALWAYS AS IDENTITY,
    destination_id       uuid NOT NULL,
    received_at          timestamptz NOT NULL,
    message_id           text NOT NULL,
    type                 text NOT NULL,
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
    context              jsonb NOT NULL DEFAULT '{}',
    -- Advertising and device ids (IDFA, GAID, IDFV, Android ID): the only place they are
    -- kept. Set to NULL when the row goes dead; the row is deleted once delivered.
    devices              jsonb,
    status               text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
    attempts             integer NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    -- What the last attempt got: an HTTP status or an error class, never a response body.
    last_error           text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    dead_at              timestamptz,
    PRIMARY KEY (project_id, id),
    FOREIGN KEY (project_id, destination_id)
        REFERENCES destinations (project_id, id) ON DELETE CASCADE
);
CREATE INDEX outbox_due_idx ON outbox (project_id, destination_id, next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX outbox_dead_idx ON outbox (project_id, destination_id, id) WHERE status = 'dead';
-- The forwarder's sweep finds rows past their age every few seconds: never a scan of the queue.
CREATE INDEX outbox_pending_age_idx ON outbox (created_at) WHERE status = 'pending';
-- Erasure finds a person's rows by the message ids of the events it deletes.
CREATE INDEX outbox_message_idx ON outbox (project_id, message_id);

-- What reached each destination. Deleted with the event's retention, and by an erasure once its
-- receipt has counted them.
CREATE TABLE deliveries (
    project_id      uuid NOT NULL,
    destination_id  uuid NOT NULL,
    message_id      text NOT NULL,
    received_at     timestamptz NOT NULL,
    delivered_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, destination_id, message_id)
);
CREATE INDEX deliveries_message_idx ON deliveries (project_id, message_id);
CREATE INDEX deliveries_received_at_idx ON deliveries (project_id, received_at);

-- The receipt's list of destinations that had already received the person's events.
ALTER TABLE erasures ADD COLUMN forwarded jsonb NOT NULL DEFAULT '[]';

-- As in 0004, plus one more kind of answer: 'destination' rows name each destination of the
-- batch's projects (message = its id, then ':' and its event types when it has a filter), so
-- the writer copies the stored rows into the outbox in the same transaction, seeing exactly
-- the destinations that exist when it commits. A batch of projects without destinations pays
-- one index probe per project.
CREATE OR REPLACE FUNCTION ingest_claim_events(
    row_projects uuid[],
    row_message_ids text[],
    row_received_at timestamptz[],
    digest_projects uuid[],
    digest_rows integer[],
    digest_values bytea[],
    lock_class integer
)
RETURNS TABLE (kind text, idx integer, project uuid, message text)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    gone uuid[];
    dropped integer[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock_shared(lock_class, hashtext(x.p::text))
    FROM (SELECT DISTINCT u.p FROM unnest(row_projects) AS u(p) ORDER BY u.p) AS x;

    RETURN QUERY
    SELECT 'need_digests'::text, NULL::integer, x.p, NULL::text
    FROM (SELECT DISTINCT u.p FROM unnest(row_projects) AS u(p)) AS x
    WHERE x.p <> ALL (digest_projects)
      AND EXISTS (SELECT 1 FROM suppressions AS s WHERE s.project_id = x.p);
    IF FOUND THEN
        RETURN;
    END IF;

    gone := ARRAY(
        SELECT x.p
        FROM (SELECT DISTINCT u.p FROM unnest(row_projects) AS u(p)) AS x
        WHERE NOT EXISTS (SELECT 1 FROM projects AS pr WHERE pr.id = x.p)
    );
    IF cardinality(gone) > 0 THEN
        dropped := ARRAY(
            SELECT u.i::integer
            FROM unnest(row_projects) WITH ORDINALITY AS u(p, i)
            WHERE u.p = ANY (gone)
        );
    END IF;
    IF cardinality(digest_rows) > 0 THEN
        dropped := dropped || ARRAY(
            SELECT DISTINCT d.i
            FROM unnest(digest_rows, digest_values) AS d(i, v)
            WHERE EXISTS (
                SELECT 1
                FROM suppressions AS s
                WHERE s.project_id = row_projects[d.i]
                  AND s.digest = d.v
            )
        );
    END IF;

    RETURN QUERY
    SELECT 'dropped'::text, x.i, NULL::uuid, NULL::text FROM unnest(dropped) AS x(i);

    RETURN QUERY
    SELECT 'destination'::text, NULL::integer, d.project_id,
           d.id::text || coalesce(':' || array_to_string(d.event_types, ','), '')
    FROM destinations AS d
    WHERE d.project_id IN (SELECT DISTINCT u.p FROM unnest(row_projects) AS u(p))
      AND d.project_id <> ALL (gone);

    RETURN QUERY
    WITH claimed AS (
        INSERT INTO event_dedup AS e (project_id, message_id, received_at)
        SELECT u.p, u.m, u.t
        FROM unnest(row_projects, row_message_ids, row_received_at) WITH ORDINALITY
            AS u(p, m, t, i)
        WHERE cardinality(dropped) = 0 OR u.i <> ALL (dropped)
        ON CONFLICT DO NOTHING
        RETURNING e.project_id, e.message_id
    )
    SELECT 'claimed'::text, NULL::integer, c.project_id, c.message_id FROM claimed AS c;
END;
$$;
