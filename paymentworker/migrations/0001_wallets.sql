-- paymentworker's own database: customer wallets and one payment per order.
-- Only SQL that both CockroachDB and PostgreSQL accept.

-- A wallet is created with the configured starting credit the first time a customer pays.
CREATE TABLE IF NOT EXISTS wallets (
    customer_id TEXT          PRIMARY KEY,
    balance     DECIMAL(14,2) NOT NULL,
    created_at  TIMESTAMPTZ   NOT NULL,
    updated_at  TIMESTAMPTZ   NOT NULL
);

-- One row per order makes the debit idempotent: a redelivered `created` finds the row and changes
-- nothing. The event ids record which events the debit and the refund produced.
CREATE TABLE IF NOT EXISTS payments (
    order_id        UUID          PRIMARY KEY,
    payment_id      UUID          NOT NULL UNIQUE,
    customer_id     TEXT          NOT NULL,
    amount          DECIMAL(14,2) NOT NULL,
    -- debited | failed | refunded
    status          TEXT          NOT NULL,
    debit_event_id  UUID          NULL,
    refund_event_id UUID          NULL,
    created_at      TIMESTAMPTZ   NOT NULL,
    updated_at      TIMESTAMPTZ   NOT NULL
);
