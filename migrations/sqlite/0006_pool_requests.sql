-- RequestPool's request ids: a retried create returns the pool the first one made. `request`
-- is what was asked (space, pool, sub-pool, family), so that an id reused for another request
-- is refused. Kept at least 24 hours.
CREATE TABLE pool_requests (
    tenant     TEXT    NOT NULL,
    request_id TEXT    NOT NULL,
    request    TEXT    NOT NULL,
    pool_id    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,           -- Unix seconds
    PRIMARY KEY (tenant, request_id)
) STRICT;
