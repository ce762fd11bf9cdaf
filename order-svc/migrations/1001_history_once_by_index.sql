-- Each message once in an order's history, kept by a unique index instead of a NOT EXISTS
-- probe: a batch records its history rows with one INSERT … ON CONFLICT DO NOTHING, which
-- checks each row against this index whatever the planner knows of the table. The index
-- also finds an order's history (GET /orders/{id} sorts its few rows by id).
CREATE UNIQUE INDEX order_history_once ON order_history (order_id, message_id);
DROP INDEX order_history_by_order;
