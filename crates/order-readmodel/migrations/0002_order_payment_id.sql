-- The payment the order was debited with: querymodelworker needs it to check a `paymentrefunded`
-- against the domain rules (a refund must name the debited payment), and the API may show it.
-- Only SQL that both CockroachDB and PostgreSQL accept.

ALTER TABLE orders ADD COLUMN IF NOT EXISTS payment_id UUID NULL;
