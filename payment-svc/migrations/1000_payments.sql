-- Wallets and one payment per order. The messaging tables come from the events crate.

CREATE TABLE wallets (
    customer_id TEXT        PRIMARY KEY,
    currency    TEXT        NOT NULL,
    balance     BIGINT      NOT NULL CHECK (balance >= 0),
    -- Running totals: deposited = balance + captured - refunded, always.
    deposited   BIGINT      NOT NULL,
    captured    BIGINT      NOT NULL DEFAULT 0,
    refunded    BIGINT      NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The natural key "one payment per order": a repeated StockReserved, under any message
-- id, finds this row (its primary key) and charges nothing.
CREATE TABLE payments (
    order_id    UUID        PRIMARY KEY,
    payment_id  UUID        UNIQUE,
    customer_id TEXT        NOT NULL,
    amount      BIGINT      NOT NULL,
    currency    TEXT        NOT NULL,
    status      TEXT        NOT NULL,
    reason      TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

