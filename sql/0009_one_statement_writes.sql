-- A small batch written in one statement, in one round trip. The writer's transaction for a
-- batch (BEGIN, claim, project keys, COPY, profiles, COMMIT) costs the service six round trips
-- whatever the batch's size: for the dozen events a commit of single-event requests carries,
-- they cost more than the rows. ingest_write_events does the same work in one statement, run
-- on its own (autocommit: the statement is the transaction); the writer uses it for small
-- batches and keeps the binary COPY for large ones (sql/0004, 0006; ingest/store/writes.py).
-- The rows come as one JSON array of arrays, which the service encodes in C in a few
-- microseconds, where twenty-one array parameters cost it more than the round trips saved.
--
-- What it keeps from the COPY path, and how:
-- * the claim is ingest_claim_events itself (locks, suppressions, deleted projects, dedup);
-- * a row is stored when its (project, message id) was claimed, the first of the batch's
--   copies (the caller passes the rows sorted by project and message id, which is the order
--   the claim locks in, with ties in arrival order, and each row's place in arrival order);
-- * the caller seals digests before the statement, with keys it keeps; the statement checks,
--   after the claim's shared subject lock (what a crypto-shred's barrier waits on), that each
--   project's keys and digest storage are still the ones it sealed with, and otherwise raises
--   SQLSTATE IGKEY: everything is rolled back and the caller reads the keys again;
-- * events and outbox rows are inserted in arrival order, and the traits of a user's stored
--   identify rows are merged in it (later keys win, as dict.update); profiles are upserted in
--   the order of (project, user id) in code points, as the COPY path's Python sort does, so
--   the two paths never deadlock on user_profiles.

CREATE AGGREGATE ingest_jsonb_merge(jsonb) (
    SFUNC = jsonb_concat,
    STYPE = jsonb,
    INITCOND = '{}'
);

-- The rows of a batch: each an array of events' columns in their order, then the device ids
-- (for the outbox) and the row's place in arrival order; idx is its 1-based position.
CREATE FUNCTION ingest_batch_rows(batch jsonb)
RETURNS TABLE (
    project_id uuid,
    received_at timestamptz,
    message_id text,
    type text,
    event text,
    user_id text,
    anonymous_id text,
    ts timestamptz,
    original_timestamp timestamptz,
    sent_at timestamptz,
    app_id text,
    country text,
    region text,
    email_sha256 text,
    email_google_sha256 text,
    phone_sha256 text,
    phone_e164_sha256 text,
    properties jsonb,
    traits jsonb,
    context jsonb,
    devices jsonb,
    arrival integer,
    idx integer
)
LANGUAGE sql
STABLE
AS $$
    SELECT (e.r->>0)::uuid, (e.r->>1)::timestamptz, e.r->>2, e.r->>3, e.r->>4, e.r->>5,
           e.r->>6, (e.r->>7)::timestamptz, (e.r->>8)::timestamptz, (e.r->>9)::timestamptz,
           e.r->>10, e.r->>11, e.r->>12, e.r->>13, e.r->>14, e.r->>15, e.r->>16,
           e.r->17, e.r->18, e.r->19, nullif(e.r->20, 'null'::jsonb), (e.r->>21)::integer,
           e.i::integer
    FROM jsonb_array_elements(batch) WITH ORDINALITY AS e(r, i)
$$;

-- Rows: 'need_digests' (project; nothing was written, retry with digests), 'dropped' (idx),
-- 'stored' (idx), 'outbox' (when rows were queued for destinations). A row neither dropped nor
-- stored is a duplicate.
CREATE FUNCTION ingest_write_events(
    batch jsonb,
    digest_projects uuid[],
    digest_rows integer[],
    digest_values bytea[],
    key_projects uuid[],
    key_sealed bytea[],
    key_storage text[],
    lock_class integer
)
RETURNS TABLE (kind text, idx integer, project uuid)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    row_projects uuid[];
    row_messages text[];
    row_received_at timestamptz[];
    need uuid[] := '{}';
    dropped integer[] := '{}';
    claimed_p uuid[] := '{}';
    claimed_m text[] := '{}';
    stored integer[];
    queued bigint := 0;
    r record;
BEGIN
    SELECT array_agg(b.project_id ORDER BY b.idx), array_agg(b.message_id ORDER BY b.idx),
           array_agg(b.received_at ORDER BY b.idx)
    INTO row_projects, row_messages, row_received_at
    FROM ingest_batch_rows(batch) AS b;

    FOR r IN
        SELECT * FROM ingest_claim_events(
            row_projects, row_messages, row_received_at, digest_projects, digest_rows,
            digest_values, lock_class
        )
    LOOP
        CASE r.kind
            WHEN 'need_digests' THEN need := need || r.project;
            WHEN 'dropped' THEN dropped := dropped || r.idx;
            WHEN 'claimed' THEN
                claimed_p := claimed_p || r.project;
                claimed_m := claimed_m || r.message;
            ELSE NULL;  -- 'destination': read below with the rows it applies to
        END CASE;
    END LOOP;
    IF cardinality(need) > 0 THEN
        RETURN QUERY SELECT 'need_digests'::text, NULL::integer, n.p FROM unnest(need) AS n(p);
        RETURN;
    END IF;

    IF EXISTS (
        SELECT 1
        FROM unnest(key_projects, key_sealed, key_storage) AS k(p, sealed, storage)
        JOIN projects AS pr ON pr.id = k.p
        WHERE pr.sealed_keys IS DISTINCT FROM k.sealed OR pr.digest_storage <> k.storage
    ) THEN
        RAISE EXCEPTION 'a project''s keys changed since they were read' USING ERRCODE = 'IGKEY';
    END IF;

    stored := ARRAY(
        SELECT min(u.i)::integer
        FROM unnest(row_projects, row_messages) WITH ORDINALITY AS u(p, m, i)
        JOIN unnest(claimed_p, claimed_m) AS c(p, m) ON c.p = u.p AND c.m = u.m
        WHERE u.i <> ALL (dropped)
        GROUP BY u.p, u.m
    );
    IF cardinality(stored) = 0 THEN
        RETURN QUERY SELECT 'dropped'::text, d.i, NULL::uuid FROM unnest(dropped) AS d(i);
        RETURN;
    END IF;

    INSERT INTO events (
        project_id, received_at, message_id, type, event, user_id, anonymous_id, "timestamp",
        original_timestamp, sent_at, app_id, country, region, email_sha256, email_google_sha256,
        phone_sha256, phone_e164_sha256, properties, traits, context
    )
    SELECT b.project_id, b.received_at, b.message_id, b.type, b.event, b.user_id,
           b.anonymous_id, b.ts, b.original_timestamp, b.sent_at, b.app_id, b.country, b.region,
           b.email_sha256, b.email_google_sha256, b.phone_sha256, b.phone_e164_sha256,
           b.properties, b.traits, b.context
    FROM ingest_batch_rows(batch) AS b
    WHERE b.idx = ANY (stored)
    ORDER BY b.arrival;

    -- As the COPY path: the destinations of the stored rows' projects, an empty or absent list
    -- of event types taking every type.
    INSERT INTO outbox (
        project_id, destination_id, received_at, message_id, type, event, user_id, anonymous_id,
        "timestamp", original_timestamp, sent_at, app_id, country, region, email_sha256,
        email_google_sha256, phone_sha256, phone_e164_sha256, properties, traits, context,
        devices
    )
    SELECT b.project_id, d.id, b.received_at, b.message_id, b.type, b.event, b.user_id,
           b.anonymous_id, b.ts, b.original_timestamp, b.sent_at, b.app_id, b.country, b.region,
           b.email_sha256, b.email_google_sha256, b.phone_sha256, b.phone_e164_sha256,
           b.properties, b.traits, b.context, b.devices
    FROM ingest_batch_rows(batch) AS b
    JOIN destinations AS d ON d.project_id = b.project_id
    WHERE b.idx = ANY (stored)
      AND (coalesce(cardinality(d.event_types), 0) = 0 OR b.type = ANY (d.event_types))
    ORDER BY b.arrival, d.id;
    GET DIAGNOSTICS queued = ROW_COUNT;

    INSERT INTO user_profiles AS p (project_id, user_id, traits, created_at, updated_at)
    SELECT b.project_id, b.user_id, ingest_jsonb_merge(b.traits ORDER BY b.arrival),
           (array_agg(b.received_at ORDER BY b.arrival))[1],
           (array_agg(b.received_at ORDER BY b.arrival))[1]
    FROM ingest_batch_rows(batch) AS b
    WHERE b.idx = ANY (stored) AND b.type = 'identify' AND b.user_id IS NOT NULL
    GROUP BY b.project_id, b.user_id
    ORDER BY b.project_id, b.user_id COLLATE "C"
    ON CONFLICT (project_id, user_id) DO UPDATE
    SET traits = p.traits || EXCLUDED.traits,
        updated_at = EXCLUDED.updated_at;

    RETURN QUERY SELECT 'dropped'::text, d.i, NULL::uuid FROM unnest(dropped) AS d(i);
    RETURN QUERY SELECT 'stored'::text, s.i, NULL::uuid FROM unnest(stored) AS s(i);
    IF queued > 0 THEN
        RETURN QUERY SELECT 'outbox'::text, NULL::integer, NULL::uuid;
    END IF;
END;
$$;
