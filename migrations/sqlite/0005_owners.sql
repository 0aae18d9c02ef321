-- Who holds an address, for allocations made with an owner (none for the others): the
-- owner's name and since when (Unix milliseconds). Goes with its subnet.
CREATE TABLE owners (
    tenant   TEXT    NOT NULL,
    space    TEXT    NOT NULL,
    subnet   TEXT    NOT NULL,
    address  TEXT    NOT NULL,            -- e.g. 10.0.0.7
    owner    TEXT    NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, space, subnet, address),
    FOREIGN KEY (tenant, space, subnet) REFERENCES subnets (tenant, space, subnet)
        ON DELETE CASCADE
) STRICT;
