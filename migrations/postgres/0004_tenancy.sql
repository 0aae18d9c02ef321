-- Tenancy: the tenants, their API tokens and their quotas. Every other table is keyed by the
-- tenant's name already; the tenant `default` holds what was stored before tenancy.
--   SELECT name, to_timestamp(created_at) FROM tenants;
--   SELECT id, tenant, role, description FROM tokens;      -- never a secret: only its hash
CREATE TABLE tenants (
    name       text   NOT NULL PRIMARY KEY,
    created_at bigint NOT NULL                 -- Unix seconds
);
INSERT INTO tenants (name, created_at) VALUES ('default', extract(epoch FROM now())::bigint);

-- API tokens: `allot_<id>_<secret>`; the secret is never stored, only its SHA-256.
CREATE TABLE tokens (
    id          text   NOT NULL PRIMARY KEY,   -- 16 hex digits
    tenant      text   NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    role        text   NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    secret_hash bytea  NOT NULL CHECK (length(secret_hash) = 32),
    description text   NOT NULL,
    created_at  bigint NOT NULL                -- Unix seconds
);
CREATE INDEX tokens_tenant ON tokens (tenant);

-- A tenant's limits; 0 means none. No row: no limits.
CREATE TABLE quotas (
    tenant              text   NOT NULL PRIMARY KEY REFERENCES tenants (name) ON DELETE CASCADE,
    max_pools           bigint NOT NULL CHECK (max_pools >= 0),
    max_addresses       bigint NOT NULL CHECK (max_addresses >= 0),
    requests_per_second bigint NOT NULL CHECK (requests_per_second >= 0)
);
