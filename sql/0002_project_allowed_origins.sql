-- A project's browser origin allow-list for its write keys. NULL accepts any origin (the
-- default: most sites embed the SDK on several hosts); a list refuses a browser request whose
-- Origin is not on it. Server SDKs send no Origin and are never affected.
ALTER TABLE projects ADD COLUMN allowed_origins text[];
