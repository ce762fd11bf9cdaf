//! The snapshot the rules' tests start from: every rule holds in it, and each test breaks
//! one.

use chrono::Utc;
use uuid::Uuid;

use super::check;
use super::snapshot::{
    ItemView, OrderView, PaymentView, ReservationView, Snapshot, StockView, WalletView,
};

pub(super) fn order(id: u128, status: &str) -> OrderView {
    OrderView {
        order_id: Uuid::from_u128(id),
        customer_id: "alice".into(),
        status: status.into(),
        total: 10,
        deadline: Utc::now() + chrono::Duration::seconds(60),
        items: vec![ItemView {
            sku: "A".into(),
            quantity: 2,
        }],
    }
}

pub(super) fn consistent() -> Snapshot {
    Snapshot {
        taken_at: Utc::now(),
        orders: vec![order(1, "confirmed"), order(2, "cancelled")],
        stock: vec![StockView {
            sku: "A".into(),
            available: 8,
            reserved: 0,
            sold: 2,
            adjusted: 10,
        }],
        wallets: vec![WalletView {
            customer_id: "alice".into(),
            balance: 90,
            deposited: 100,
            captured: 20,
            refunded: 10,
        }],
        reservations: vec![
            ReservationView {
                order_id: Uuid::from_u128(1),
                status: "sold".into(),
                items: vec![ItemView {
                    sku: "A".into(),
                    quantity: 2,
                }],
            },
            ReservationView {
                order_id: Uuid::from_u128(2),
                status: "released".into(),
                items: vec![ItemView {
                    sku: "A".into(),
                    quantity: 1,
                }],
            },
        ],
        payments: vec![
            PaymentView {
                order_id: Uuid::from_u128(1),
                customer_id: "alice".into(),
                amount: 10,
                status: "captured".into(),
            },
            PaymentView {
                order_id: Uuid::from_u128(2),
                customer_id: "alice".into(),
                amount: 10,
                status: "refunded".into(),
            },
        ],
    }
}

pub(super) fn rules(s: &Snapshot) -> Vec<&'static str> {
    check(s).into_iter().map(|b| b.rule).collect()
}
