-- Messaging tables shared by every service: the transactional outbox and the inbox.

CREATE TABLE IF NOT EXISTS outbox (
    id             BIGSERIAL PRIMARY KEY,
    message_id     UUID        NOT NULL UNIQUE,
    event_type     TEXT        NOT NULL,
    routing_key    TEXT        NOT NULL,
    correlation_id TEXT        NOT NULL,
    causation_id   UUID,
    producer       TEXT        NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    -- The exact envelope bytes to publish (UTF-8 JSON).
    body           TEXT        NOT NULL,
    traceparent    TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at        TIMESTAMPTZ,
    -- A row the broker refused (unroutable, nacked) waits before its next try, so it never
    -- blocks the rows behind it.
    attempts        INT         NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ,
    last_error      TEXT
);

-- The relay's poll: unsent rows in id order. A partial index stays as small as the backlog.
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
-- Events about one saga, for traces.
CREATE INDEX IF NOT EXISTS outbox_correlation ON outbox (correlation_id);
-- Housekeeping: sent rows older than the retention.
CREATE INDEX IF NOT EXISTS outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Wake relays after every transaction that wrote outbox rows. NOTIFY is delivered after
-- commit and coalesced per transaction, so a batch of rows costs one notification.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('saga_outbox', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

CREATE TABLE IF NOT EXISTS inbox (
    consumer       TEXT        NOT NULL,
    message_id     UUID        NOT NULL,
    event_type     TEXT        NOT NULL,
    correlation_id TEXT        NOT NULL,
    causation_id   UUID,
    producer       TEXT        NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The claim: one row per consumer and message id.
    PRIMARY KEY (consumer, message_id)
);

-- Events about one saga, for traces.
CREATE INDEX IF NOT EXISTS inbox_correlation ON inbox (correlation_id);
-- Housekeeping: rows older than the retention.
CREATE INDEX IF NOT EXISTS inbox_received_at ON inbox (received_at);
