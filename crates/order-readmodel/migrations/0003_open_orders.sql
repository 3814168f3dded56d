-- deadlinewatcher's scan: the open orders (Pending waits for its payment, Paid for its review) by the
-- time they entered their status (`updated_at`, the stored time of the event that opened it). Partial,
-- so that it holds only the orders that can still miss a deadline: a scan costs what the open orders
-- cost, not what every order ever placed costs, and the index stays small as orders finish.
-- Only SQL that both CockroachDB (partial indexes since 20.2) and PostgreSQL accept.

CREATE INDEX IF NOT EXISTS orders_open ON orders (status, updated_at, order_id)
    WHERE status IN ('Pending', 'Paid');
