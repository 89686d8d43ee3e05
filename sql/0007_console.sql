-- The partner console (/console): server-side sign-in sessions, the events a project refused
-- (its live view shows them beside the stored ones), and an index for "what arrived just now".

-- A session is named by a random cookie; only its SHA-256 is stored, so a copy of this table
-- signs nobody in. It acts as the secret key it was opened with, and ends when that key stops
-- working (revoked, rotated past its grace) as well as when it expires.
CREATE TABLE console_sessions (
    id_digest     bytea PRIMARY KEY,
    org_id        uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- The synchronizer token every state-changing form carries (CSRF).
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_at_idx ON console_sessions (expires_at);
CREATE INDEX console_sessions_key_id_idx ON console_sessions (key_id);

-- Refused events, for the live view only: the reason as the sender was told it, the event's
-- type when it had a valid one, never a value from the event (a refused event is often refused
-- for carrying a raw identifier). Kept one day.
CREATE TABLE rejections (
    project_id   uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    id           bigint GENERATED ALWAYS AS IDENTITY,
    received_at  timestamptz NOT NULL,
    event_type   text,
    code         text NOT NULL,
    field        text,
    reason       text NOT NULL,
    PRIMARY KEY (project_id, id)
);
CREATE INDEX rejections_received_at_idx ON rejections (received_at);

-- The live view asks for the last seconds of a project's events. received_at grows with the
-- physical order of rows in a partition, so a BRIN index finds those few pages for almost no
-- cost on the write path (a b-tree on (project_id, received_at) would cost every COPY).
CREATE INDEX events_received_at_brin ON events USING brin (received_at);
