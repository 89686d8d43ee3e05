-- Identifiers a stolen dump cannot reverse (keyring.py). Each project's key material (its
-- pseudonym key and a data key that seals email and phone digests) is stored wrapped under a
-- master key the database never holds. The service wraps the pseudonym keys that are still
-- plain when it starts (the migration cannot: it has no master key) and then clears them.
ALTER TABLE projects
    ADD COLUMN sealed_keys bytea,
    -- protected (the default): digests stored sealed; plain: stored as plain SHA-256, for a
    -- partner who wants that and accepts what it means (README, Personal data).
    ADD COLUMN digest_storage text NOT NULL DEFAULT 'protected'
        CONSTRAINT projects_digest_storage_check CHECK (digest_storage IN ('protected', 'plain')),
    -- When the project's data key was last replaced (a crypto-shred): null if never.
    ADD COLUMN shredded_at timestamptz,
    -- Cleared once wrapped into sealed_keys. The default stays for rows made without the
    -- service (tests, repairs): the service wraps them at its next start, and until then such
    -- a project's digests are stored plain.
    ALTER COLUMN pseudonym_key DROP NOT NULL,
    ADD CONSTRAINT projects_has_keys CHECK (sealed_keys IS NOT NULL OR pseudonym_key IS NOT NULL);
