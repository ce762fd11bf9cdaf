//! payment-svc's OpenAPI document: the routes of [`crate::http`] (described by the
//! `#[utoipa::path]` on each handler) and the bodies they answer, plus the shared ones of
//! [`platform::openapi`]. `docs/openapi/payment-svc.json` is its committed copy.

use crate::schema::{Payment, PaymentList, Wallet, WalletList};

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        crate::http::show_wallet,
        crate::http::list_wallets,
        crate::http::show_payment,
        crate::http::list_payments,
    ),
    components(schemas(Wallet, WalletList, Payment, PaymentList)),
    tags((name = "payments", description = "Wallets per customer and payments per order")),
)]
struct PaymentApiDoc;

/// The whole document, as `GET /openapi.json` answers it.
pub fn document() -> utoipa::openapi::OpenApi {
    platform::openapi::document(
        crate::SERVICE,
        "Owns customer wallets and payments. Money moves only through events (FundsDeposited \
         from operators, the saga's payments and refunds); this API reads it (docs/http.md).",
        <PaymentApiDoc as utoipa::OpenApi>::openapi(),
    )
}
