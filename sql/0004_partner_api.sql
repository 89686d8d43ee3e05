-- The partner API: key rotation, data-subject requests (current state, erasure, suppression),
-- the audit log and the idempotency cache. What is deliberately absent: no column holds an
-- erased person's identifier in clear (suppressions, receipts and the audit log keep a keyed
-- digest), and the idempotency cache keeps no request body and no issued secret.

-- Per-organization and per-project random keys for keyed digests (HMAC-SHA256): suppressions,
-- receipts and audit rows prove which person a request was about without keeping the person,
-- and a guessable user id cannot be found again by hashing candidates. gen_random_uuid() draws
-- from the server's strong random source; two of them give 244 random bits.
ALTER TABLE organizations
    ADD COLUMN pseudonym_key bytea NOT NULL
        DEFAULT sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
ALTER TABLE projects
    ADD COLUMN pseudonym_key bytea NOT NULL
        DEFAULT sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

-- Rotation: the old key keeps working until expires_at (the grace period the caller chose).
ALTER TABLE api_keys
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN replaced_by uuid;

-- Export pages through a user's events by (received_at, message_id): the index holds the key.
CREATE INDEX events_user_page_idx ON events (project_id, user_id, received_at, message_id);
DROP INDEX events_user_idx;
DROP INDEX events_anonymous_idx;
CREATE INDEX events_anonymous_page_idx
    ON events (project_id, anonymous_id, received_at, message_id);
-- Access and erasure by hashed email or phone. Partial: most events carry neither, and those
-- cost these indexes nothing on the write path.
CREATE INDEX events_email_sha256_idx ON events (project_id, email_sha256, received_at, message_id)
    WHERE email_sha256 IS NOT NULL;
CREATE INDEX events_email_google_sha256_idx
    ON events (project_id, email_google_sha256, received_at, message_id)
    WHERE email_google_sha256 IS NOT NULL;
CREATE INDEX events_phone_sha256_idx ON events (project_id, phone_sha256, received_at, message_id)
    WHERE phone_sha256 IS NOT NULL;
CREATE INDEX events_phone_e164_sha256_idx
    ON events (project_id, phone_e164_sha256, received_at, message_id)
    WHERE phone_e164_sha256 IS NOT NULL;

-- A user's current state: the traits of their identify events merged in arrival order. Written
-- by the writer in the same transaction as the events (no foreign key: the hot path takes no
-- lock on projects; deleting a project deletes these rows itself).
CREATE TABLE user_profiles (
    project_id   uuid NOT NULL,
    user_id      text NOT NULL,
    traits       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (project_id, user_id)
);

-- Erased people stay suppressed: the writer drops an event carrying any of these identifiers,
-- checked inside its insert transaction. digest = HMAC-SHA256(project key, kind || ':' || value)
-- where value is the user id, the anonymous id, or the hex SHA-256 of the email or phone.
CREATE TABLE suppressions (
    project_id   uuid NOT NULL,
    digest       bytea NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('user_id', 'anonymous_id', 'email', 'phone')),
    erasure_id   uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, digest)
);

-- Erasure receipts: counts per data class and times, never the person (subject_digest is the
-- same keyed digest as a suppression's).
CREATE TABLE erasures (
    project_id      uuid NOT NULL,
    id              uuid NOT NULL,
    org_id          uuid NOT NULL,
    subject_kind    text NOT NULL
        CHECK (subject_kind IN ('user_id', 'anonymous_id', 'email', 'phone')),
    subject_digest  bytea NOT NULL,
    key_id          uuid,
    request_id      text,
    status          text NOT NULL CHECK (status IN ('running', 'completed')),
    counts          jsonb NOT NULL DEFAULT '{}',
    identifiers     integer NOT NULL DEFAULT 0,
    requested_at    timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (project_id, id)
);

-- Every create, update and delete of projects and keys, and every export and erasure.
CREATE TABLE audit_log (
    org_id       uuid NOT NULL,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    id           uuid NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    key_id       uuid,
    request_id   text,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text NOT NULL,
    project_id   uuid,
    details      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (org_id, seq)
);

-- Idempotency-Key: one row per (organization, key, client key). The client's key string is kept
-- only as a digest, the request only as a keyed fingerprint of method, path and body (a body may
-- name a person), the answer as sent, except an issued secret (replayed as a 409 instead).
CREATE TABLE idempotency_keys (
    org_id        uuid NOT NULL,
    key_id        uuid NOT NULL,
    key_digest    bytea NOT NULL,
    fingerprint   bytea NOT NULL,
    locked_until  timestamptz,
    status        integer,
    content_type  text,
    body          bytea,
    holds_secret  boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (org_id, key_id, key_digest)
);
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);

-- A deleted project whose data is still being deleted: the request that deleted it goes on
-- until done, and the maintenance task finishes the work of one that crashed.
CREATE TABLE project_deletions (
    project_id    uuid PRIMARY KEY,
    org_id        uuid NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now()
);

-- The writer's claim, in one round trip: take the shared per-project locks an erasure's barrier
-- waits on; then (each statement of a volatile function sees what committed before it
-- started, so after the locks) drop the rows of deleted projects and of suppressed people, and
-- claim the others' message ids. The caller passes keyed digests only for the projects it
-- knows to have suppressions; a project that has some and got none comes back as
-- 'need_digests' and nothing is claimed, so the caller retries with them.
-- Rows: 'need_digests' (project), 'dropped' (idx, 1-based), 'claimed' (project, message).
CREATE FUNCTION ingest_claim_events(
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

    -- The usual batch names live projects and no suppressed person: then this is the plain
    -- dedup claim, with no per-row work added.
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
