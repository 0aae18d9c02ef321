-- RequestPool's request ids: a retried create returns the pool the first one made. `request`
-- is what was asked (space, pool, sub-pool, family), so that an id reused for another request
-- is refused. Kept at least 24 hours.
CREATE TABLE pool_requests (
    tenant     text   NOT NULL,
    request_id text   NOT NULL,
    request    text   NOT NULL,
    pool_id    text   NOT NULL,
    created_at bigint NOT NULL,            -- Unix seconds
    PRIMARY KEY (tenant, request_id)
);
