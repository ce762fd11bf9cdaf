-- Stock per SKU and one reservation per order. The messaging tables come from the events crate.

CREATE TABLE stock (
    sku        TEXT        PRIMARY KEY,
    available  BIGINT      NOT NULL CHECK (available >= 0),
    reserved   BIGINT      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold       BIGINT      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    -- Sum of every StockAdjusted delta: always available + reserved + sold.
    adjusted   BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The natural key "one reservation per order": a second OrderCreated for the same order,
-- under any message id, finds this row (its primary key) and reserves nothing.
CREATE TABLE reservations (
    order_id   UUID        PRIMARY KEY,
    status     TEXT        NOT NULL,
    items      JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

