-- Orders and their history. The messaging tables (outbox, inbox) come from the events crate.

CREATE TABLE orders (
    order_id        UUID        PRIMARY KEY,
    customer_id     TEXT        NOT NULL,
    status          TEXT        NOT NULL,
    reason          TEXT,
    items           JSONB       NOT NULL,
    total           BIGINT      NOT NULL,
    currency        TEXT        NOT NULL,
    deadline        TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- POST /orders with an Idempotency-Key: the key, and a hash of the body it came with.
    idempotency_key TEXT        UNIQUE,
    request_hash    TEXT
);

-- The deadline sweep: open orders by deadline. Partial, so it holds only open orders.
CREATE INDEX orders_open_by_deadline ON orders (deadline) WHERE status IN ('pending', 'reserved');
-- GET /orders?status=…: newest first within a status.
CREATE INDEX orders_by_status ON orders (status, created_at DESC);

CREATE TABLE order_history (
    id         BIGSERIAL   PRIMARY KEY,
    order_id   UUID        NOT NULL REFERENCES orders (order_id),
    event_type TEXT        NOT NULL,
    message_id UUID        NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- GET /orders/{id}: one order's history in order.
CREATE INDEX order_history_by_order ON order_history (order_id, id);
