-- The read model that `GET /api/orders...` serves. Only querymodelworker writes it, and only from events.
-- Only SQL that both CockroachDB and PostgreSQL accept.

CREATE TABLE IF NOT EXISTS orders (
    order_id      UUID          PRIMARY KEY,
    customer_id   TEXT          NOT NULL,
    restaurant_id TEXT          NOT NULL,
    status        TEXT          NOT NULL,
    amount        DECIMAL(14,2) NOT NULL,
    -- Set by `paymentrefunded` on a Rejected or Cancelled order; the status itself stays final.
    refunded      BOOL          NOT NULL DEFAULT false,
    -- Aggregate version of the last event applied: the next one is applied only at version + 1.
    version       INT8          NOT NULL,
    -- Why the order was rejected, cancelled or its payment failed.
    reason        TEXT          NULL,
    -- The trace the order was created in, returned by the API.
    trace_id      TEXT          NULL,
    created_on    TIMESTAMPTZ   NOT NULL,
    updated_at    TIMESTAMPTZ   NOT NULL
);

-- `GET /api/orders?customer_id=...`: newest first, keyset pagination on (created_on, order_id).
CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, created_on, order_id);

CREATE TABLE IF NOT EXISTS order_items (
    order_id   UUID          NOT NULL REFERENCES orders (order_id),
    line_no    INT8          NOT NULL,
    code       TEXT          NOT NULL,
    name       TEXT          NOT NULL,
    unit_price DECIMAL(14,2) NOT NULL,
    quantity   INT8          NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
