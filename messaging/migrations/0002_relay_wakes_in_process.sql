-- Relays are woken in process after commit, no longer by a trigger's NOTIFY: PostgreSQL
-- serialises the commits of every transaction that issued NOTIFY (one global lock), which
-- halved the commits per second a service database could do. The 1 s poll of every relay
-- remains for rows whose writer died between its commit and its relay.
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
