-- Run once by the postgres container when its data directory is first created
-- (see compose.yaml). One database per service: no service reads another's data.
-- Each service creates its own tables (migrations) at start-up.
CREATE DATABASE orders;
CREATE DATABASE inventory;
CREATE DATABASE payments;
