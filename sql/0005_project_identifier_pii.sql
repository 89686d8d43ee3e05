-- What a project does with a user_id or anonymous_id that is plainly an email address or a
-- phone number: refuse the event (the default: storing the id would keep the raw value, and
-- hashing it silently would change what the partner keys on), or store the id's SHA-256
-- (normalized as everywhere else) in its place.
ALTER TABLE projects
    ADD COLUMN identifier_pii text NOT NULL DEFAULT 'reject'
        CONSTRAINT projects_identifier_pii_check CHECK (identifier_pii IN ('reject', 'hash'));
