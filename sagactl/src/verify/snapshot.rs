//! What the checks read: every order, stock row, wallet, reservation and payment, as the
//! services' list endpoints answer them, page by page.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Clone, Deserialize)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: String,
    pub total: i64,
    pub deadline: DateTime<Utc>,
    /// The order's lines (`unit_price` is not needed here and is ignored).
    pub items: Vec<ItemView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StockView {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub adjusted: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WalletView {
    pub customer_id: String,
    pub balance: i64,
    pub deposited: i64,
    pub captured: i64,
    pub refunded: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ItemView {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReservationView {
    pub order_id: Uuid,
    pub status: String,
    pub items: Vec<ItemView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentView {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount: i64,
    pub status: String,
}

/// Everything the checks read, taken at `taken_at`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    pub orders: Vec<OrderView>,
    pub stock: Vec<StockView>,
    pub wallets: Vec<WalletView>,
    pub reservations: Vec<ReservationView>,
    pub payments: Vec<PaymentView>,
}

/// Base URLs of the three services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub order: String,
    pub inventory: String,
    pub payment: String,
}

/// The services answer at most 1000 rows a page.
const PAGE: usize = 1000;

impl Snapshot {
    /// Reads every list endpoint page by page, however many rows there are.
    pub async fn fetch(http: &reqwest::Client, at: &Endpoints) -> anyhow::Result<Snapshot> {
        let taken_at = Utc::now();
        let orders = fetch_pages(
            http,
            &at.order,
            "/orders",
            "orders",
            BEFORE_ANY_ID,
            |o: &OrderView| o.order_id.to_string(),
        )
        .await?;
        let reservations = fetch_pages(
            http,
            &at.inventory,
            "/reservations",
            "reservations",
            BEFORE_ANY_ID,
            |r: &ReservationView| r.order_id.to_string(),
        )
        .await?;
        let payments = fetch_pages(
            http,
            &at.payment,
            "/payments",
            "payments",
            BEFORE_ANY_ID,
            |p: &PaymentView| p.order_id.to_string(),
        )
        .await?;
        let stock = fetch_pages(
            http,
            &at.inventory,
            "/stock",
            "stock",
            BEFORE_ANY_KEY,
            |s: &StockView| s.sku.clone(),
        )
        .await?;
        let wallets = fetch_pages(
            http,
            &at.payment,
            "/wallets",
            "wallets",
            BEFORE_ANY_KEY,
            |w: &WalletView| w.customer_id.clone(),
        )
        .await?;
        Ok(Snapshot {
            taken_at,
            orders,
            stock,
            wallets,
            reservations,
            payments,
        })
    }
}

async fn fetch_list<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<Vec<T>> {
    let resp = http.get(url).send().await?.error_for_status()?;
    let mut body: serde_json::Value = resp.json().await?;
    Ok(serde_json::from_value(body[key].take())?)
}

/// A key that sorts before every row of a list: the nil UUID for lists in id order, the
/// empty string for lists in the order of a text key.
const BEFORE_ANY_ID: &str = "00000000-0000-0000-0000-000000000000";
const BEFORE_ANY_KEY: &str = "";

/// Every row of the list at `base` + `path`, a page at a time: each page asks for the
/// rows after the last key (`id`) of the one before, the first after `first`, until a
/// page comes back short. Every page names `after`, so every page comes in key order
/// (`GET /orders` without it answers the newest first).
async fn fetch_pages<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
    first: &str,
    id: impl Fn(&T) -> String,
) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::new();
    let mut after = first.to_owned();
    let list = format!("{}{path}", base.trim_end_matches('/'));
    let limit = PAGE.to_string();
    loop {
        let query = [("limit", limit.as_str()), ("after", after.as_str())];
        let url = url::Url::parse_with_params(&list, &query)?;
        let page: Vec<T> = fetch_list(http, url.as_str(), key).await?;
        let n = page.len();
        if let Some(last) = page.last() {
            after = id(last);
        }
        all.extend(page);
        if n < PAGE {
            return Ok(all);
        }
    }
}
