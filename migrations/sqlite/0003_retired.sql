-- The last version of each deleted subnet: a subnet created again continues after it, so a
-- version never names two different states of one subnet.
CREATE TABLE retired (
    tenant  TEXT    NOT NULL,
    space   TEXT    NOT NULL,
    subnet  TEXT    NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tenant, space, subnet)
) STRICT;
