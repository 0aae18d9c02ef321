-- allot's schema on PostgreSQL. Every table is keyed by tenant. Read it in psql:
--   SELECT space, subnet, version FROM subnets;              -- the subnets and their versions
--   SELECT subnet, sub_pool FROM pools;                      -- pools (sub_pool NULL: the whole subnet)
--   SELECT first, last, bits FROM runs WHERE subnet = '10.0.0.0/24' ORDER BY first;
--
-- One row per subnet. `version` grows by one with every change and is the unit of
-- serialization between replicas: a writer updates the row only at the version it read.
CREATE TABLE subnets (
    tenant  text    NOT NULL,
    space   text    NOT NULL,
    subnet  cidr    NOT NULL,
    version bigint  NOT NULL CHECK (version > 0),
    -- The serial-allocation cursor: the ordinal (offset in the subnet) a serial request tries
    -- first. Up to 2^128, so numeric.
    cursor  numeric(39, 0) NOT NULL CHECK (cursor >= 0),
    PRIMARY KEY (tenant, space, subnet)
);
-- Overlap checks (`subnet && $1`) when a replica creates a subnet.
CREATE INDEX subnets_overlap ON subnets USING gist (subnet inet_ops);

-- The pools of each subnet: the one without a sub-pool (NULL) and the sub-pools (ip-ranges).
CREATE TABLE pools (
    tenant   text NOT NULL,
    space    text NOT NULL,
    subnet   cidr NOT NULL,
    sub_pool cidr,
    UNIQUE NULLS NOT DISTINCT (tenant, space, subnet, sub_pool),
    FOREIGN KEY (tenant, space, subnet) REFERENCES subnets (tenant, space, subnet)
        ON DELETE CASCADE
);

-- The subnet's allocation bitmap as maximal runs of identical 64-address blocks: the run
-- covers `first`..`last` (first is block-aligned; last is the run's last address, or the
-- subnet's last address for the final run), and `bits` is the block repeated over the run
-- (bit i = address first + 64k + i in use; 0 = all free, -1 = all in use). A change rewrites
-- only the runs around the addresses it touched.
CREATE TABLE runs (
    tenant text   NOT NULL,
    space  text   NOT NULL,
    subnet cidr   NOT NULL,
    first  inet   NOT NULL,
    last   inet   NOT NULL,
    bits   bigint NOT NULL,
    PRIMARY KEY (tenant, space, subnet, first),
    FOREIGN KEY (tenant, space, subnet) REFERENCES subnets (tenant, space, subnet)
        ON DELETE CASCADE
);
