-- Who holds an address, for allocations made with an owner (none for the others): the
-- owner's name and since when (Unix milliseconds). Goes with its subnet.
--   SELECT address, owner, to_timestamp(since_ms / 1000.0) FROM owners ORDER BY address;
CREATE TABLE owners (
    tenant   text   NOT NULL,
    space    text   NOT NULL,
    subnet   cidr   NOT NULL,
    address  inet   NOT NULL,
    owner    text   NOT NULL,
    since_ms bigint NOT NULL,
    PRIMARY KEY (tenant, space, subnet, address),
    FOREIGN KEY (tenant, space, subnet) REFERENCES subnets (tenant, space, subnet)
        ON DELETE CASCADE
);
