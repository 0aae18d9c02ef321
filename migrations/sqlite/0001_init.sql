-- One row per subnet: its address set (runs and serial cursor, engine encoding format 1) and a
-- version that every change bumps, so a stale writer is refused. Keyed by tenant from day one.
CREATE TABLE subnets (
    tenant  TEXT    NOT NULL,
    space   TEXT    NOT NULL,
    subnet  TEXT    NOT NULL,           -- CIDR, e.g. 192.168.10.0/24
    version INTEGER NOT NULL CHECK (version > 0),
    state   BLOB    NOT NULL,
    PRIMARY KEY (tenant, space, subnet)
) STRICT;

-- The pools of each subnet: the one without sub-pool ('') and the sub-pools (ip-ranges).
CREATE TABLE pools (
    tenant   TEXT NOT NULL,
    space    TEXT NOT NULL,
    subnet   TEXT NOT NULL,
    sub_pool TEXT NOT NULL,             -- CIDR, or '' for the pool without sub-pool
    PRIMARY KEY (tenant, space, subnet, sub_pool),
    FOREIGN KEY (tenant, space, subnet) REFERENCES subnets (tenant, space, subnet)
        ON DELETE CASCADE
) STRICT;
