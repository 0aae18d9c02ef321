-- The last version of each deleted subnet: a subnet created again continues after it, so a
-- version never names two different states of one subnet (a replica that missed the deletion
-- cannot mistake the new subnet for the one it cached).
CREATE TABLE retired (
    tenant  text   NOT NULL,
    space   text   NOT NULL,
    subnet  cidr   NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (tenant, space, subnet)
);
