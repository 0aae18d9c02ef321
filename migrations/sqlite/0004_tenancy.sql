-- Tenancy: the tenants, their API tokens and their quotas. Every other table is keyed by the
-- tenant's name already; the tenant `default` holds what was stored before tenancy.
CREATE TABLE tenants (
    name       TEXT    NOT NULL PRIMARY KEY,
    created_at INTEGER NOT NULL            -- Unix seconds
) STRICT;
INSERT INTO tenants (name, created_at) VALUES ('default', unixepoch());

-- API tokens: `allot_<id>_<secret>`; the secret is never stored, only its SHA-256.
CREATE TABLE tokens (
    id          TEXT    NOT NULL PRIMARY KEY,     -- 16 hex digits
    tenant      TEXT    NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    role        TEXT    NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    secret_hash BLOB    NOT NULL CHECK (length(secret_hash) = 32),
    description TEXT    NOT NULL,
    created_at  INTEGER NOT NULL                  -- Unix seconds
) STRICT;
CREATE INDEX tokens_tenant ON tokens (tenant);

-- A tenant's limits; 0 means none. No row: no limits.
CREATE TABLE quotas (
    tenant              TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (name) ON DELETE CASCADE,
    max_pools           INTEGER NOT NULL CHECK (max_pools >= 0),
    max_addresses       INTEGER NOT NULL CHECK (max_addresses >= 0),
    requests_per_second INTEGER NOT NULL CHECK (requests_per_second >= 0)
) STRICT;
