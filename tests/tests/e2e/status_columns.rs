//! The status columns are typed: a stored status its type does not know (written here
//! behind the services' backs) is an error wherever a service reads it, never read as some
//! other status.

use saga_tests::{Service, Stack, StackOptions, StatusCode, order_request};
use uuid::Uuid;

#[tokio::test]
async fn a_stored_status_no_service_knows_is_an_error_not_another_status() {
    let stack = Stack::start(StackOptions::default()).await;
    let order_id = stack
        .place_order_ok(&order_request(
            "c-unknown-status",
            "EUR",
            &[("SKU-X", 1, 1)],
        ))
        .await;
    let made_up = Uuid::now_v7();
    let writes = [
        (
            Service::Order,
            "UPDATE orders SET status = 'shipped' WHERE order_id = $1",
            Uuid::parse_str(&order_id).expect("an order id"),
            format!("/orders/{order_id}"),
        ),
        (
            Service::Inventory,
            "INSERT INTO reservations (order_id, status, items) VALUES ($1, 'shipped', '[]')",
            made_up,
            format!("/reservations/{made_up}"),
        ),
        (
            Service::Payment,
            "INSERT INTO payments (order_id, customer_id, amount, currency, status)
             VALUES ($1, 'c', 0, 'EUR', 'shipped')",
            made_up,
            format!("/payments/{made_up}"),
        ),
    ];
    for (service, sql, id, path) in writes {
        let db = stack.db(service).await;
        let written = sqlx::query(sql)
            .bind(id)
            .execute(&db)
            .await
            .expect("the test writes the row");
        assert_eq!(written.rows_affected(), 1, "{sql}");
        let (status, body) = stack.get(service, &path).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{} answered {path} with {body}",
            service.name()
        );
    }
}
