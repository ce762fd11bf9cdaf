-- When order-svc was last known to work: one row, moved to now() by every replica that can
-- reach its database and broker, once per sweep interval. A gap in it is time during which
-- no replica could work (an outage, a crash, a restart, a deploy), and the replica that
-- finds the gap adds it to the deadline of every open order (contract, step 7).
CREATE TABLE working_clock (
    id         BOOLEAN     PRIMARY KEY DEFAULT true CHECK (id),
    working_at TIMESTAMPTZ NOT NULL
);
