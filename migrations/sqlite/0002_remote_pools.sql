-- Pools of remote IPAM plugins: allot's pool id and the plugin's own (opaque) pool id.
CREATE TABLE remote_pools (
    tenant    TEXT NOT NULL,
    pool_id   TEXT NOT NULL,              -- allot's: <space>/<subnet>[/<sub-pool>]
    remote_id TEXT NOT NULL,              -- the plugin's PoolID
    PRIMARY KEY (tenant, pool_id)
) STRICT;
