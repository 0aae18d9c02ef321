-- The last version of each deleted subnet: a subnet created again continues after it, so a
-- version never names two different states of one subnet.
CREATE TABLE retired (
    tenant  TEXT    NOT NULL,
    space   TEXT    NOT NULL,
    subnet  TEXT    NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (tenant, space, subnet)
) STRICT;

-- Every deletion of a subnet records its last version.
CREATE TRIGGER subnets_retire AFTER DELETE ON subnets
BEGIN
    INSERT INTO retired (tenant, space, subnet, version)
    VALUES (old.tenant, old.space, old.subnet, old.version)
    ON CONFLICT (tenant, space, subnet) DO UPDATE SET version = excluded.version;
END;
