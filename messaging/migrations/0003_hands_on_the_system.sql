-- Hands on the system: every change an operator (or a customer, for a cancel) makes by hand
-- is recorded here by the service that carries it out, in the transaction that applies it
-- where there is one. Nothing writes here but the service's own code paths for those
-- actions: there is no endpoint that inserts, and the trigger below keeps every record as
-- it was written. The one change a record may see is its outcome, once, from `running`
-- (a dead-letter redrive, purge or edit is recorded when it starts and finished when it
-- ends, so a process that dies half way still leaves a record of what it was doing); its
-- end may add the ids it came to name (the messages a redrive took) to its subjects.

CREATE TABLE IF NOT EXISTS audit_log (
    id          BIGSERIAL   PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Who: the JWT `sub` over HTTP; over AMQP the operator's name when the broker user may
    -- name one, else the broker user.
    actor       TEXT        NOT NULL,
    via         TEXT        NOT NULL CHECK (via IN ('http', 'amqp')),
    -- Over AMQP: the broker-validated `user_id` the message was published with.
    broker_user TEXT,
    -- stock_adjustment, deposit, cancel, replay, edit, purge.
    action      TEXT        NOT NULL,
    -- The ids the action names (order, customer, SKU, message ids), for search.
    subjects    TEXT[]      NOT NULL DEFAULT '{}',
    -- What: the request, the filter, the payload, the diff.
    detail      JSONB       NOT NULL DEFAULT '{}',
    -- running, then applied, rejected, done, failed, interrupted...
    outcome     TEXT        NOT NULL,
    result      JSONB,
    finished_at TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at);
CREATE INDEX IF NOT EXISTS audit_log_subjects ON audit_log USING GIN (subjects);

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND OLD.outcome = 'running'
        AND NEW.id = OLD.id AND NEW.at = OLD.at AND NEW.actor = OLD.actor
        AND NEW.via = OLD.via AND NEW.broker_user IS NOT DISTINCT FROM OLD.broker_user
        AND NEW.action = OLD.action AND NEW.subjects @> OLD.subjects
        AND NEW.detail = OLD.detail
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: a record is never changed or deleted (% refused)', TG_OP;
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Dead-letter jobs (redrive, purge, edit) and how far each got, so any replica can answer
-- for a job that another one runs. `updated_at` is touched as it goes: a running job not
-- touched for a while belonged to a process that stopped.
CREATE TABLE IF NOT EXISTS dlq_jobs (
    id          UUID        PRIMARY KEY,
    audit_id    BIGINT      NOT NULL REFERENCES audit_log (id),
    kind        TEXT        NOT NULL,
    actor       TEXT        NOT NULL,
    filter      JSONB       NOT NULL DEFAULT '{}',
    status      TEXT        NOT NULL,
    matched     BIGINT      NOT NULL DEFAULT 0,
    done        BIGINT      NOT NULL DEFAULT 0,
    outcome     JSONB       NOT NULL DEFAULT '{}',
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS dlq_jobs_started_at ON dlq_jobs (started_at);
