-- Run once by the postgres container after 10-saga-databases.sql, when its data
-- directory is first created (see compose.yaml). One login role per service, owning
-- only its own database; nobody else (but superusers) may connect to it.
--
-- The passwords are for local development only. Elsewhere, create the roles with
-- passwords from your secret store (docs/operations.md, "Secure").
--
-- The services still connect to the `postgres` database at start-up, to create their
-- own database if it is missing; CONNECT on it is granted to PUBLIC by default.
CREATE ROLE order_svc LOGIN PASSWORD 'order-svc-dev';
CREATE ROLE inventory_svc LOGIN PASSWORD 'inventory-svc-dev';
CREATE ROLE payment_svc LOGIN PASSWORD 'payment-svc-dev';

-- The owner may create tables (migrations) in the database's public schema, which
-- PostgreSQL 15 and later give to the database owner.
ALTER DATABASE orders OWNER TO order_svc;
ALTER DATABASE inventory OWNER TO inventory_svc;
ALTER DATABASE payments OWNER TO payment_svc;

REVOKE CONNECT, TEMPORARY ON DATABASE orders FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE inventory FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE payments FROM PUBLIC;
