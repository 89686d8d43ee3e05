-- Retention per project, per data class: how long its events are kept (default 13 months) and
-- how long its message ids are remembered for dedup (default 7 days, as RudderStack). The purge
-- (Store.purge: `ingest purge` and the service's hourly task) reads both.
ALTER TABLE projects
    ADD COLUMN events_retention_days integer NOT NULL DEFAULT 395
        CONSTRAINT projects_events_retention_days_check CHECK (events_retention_days >= 1),
    ADD COLUMN dedup_window_days integer NOT NULL DEFAULT 7
        CONSTRAINT projects_dedup_window_days_check CHECK (dedup_window_days >= 1);

-- The purge deletes message ids per project (one project's rows per statement, so that on a
-- distributed cluster each statement runs on one shard): index what it looks for. The
-- received_at-only index served the old global purge and nothing else, and costs every write.
CREATE INDEX event_dedup_project_received_at_idx ON event_dedup (project_id, received_at);
DROP INDEX event_dedup_received_at_idx;
