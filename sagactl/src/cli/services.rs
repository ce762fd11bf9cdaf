//! The arguments of the commands on what each service holds: orders (order-svc), stock
//! (inventory-svc) and wallets (payment-svc).

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum OrderCommand {
    /// Place an order: `sagactl order place --customer alice --currency EUR --item BOOK:2:1500`.
    Place {
        /// The customer placing the order (their wallet pays).
        #[arg(long)]
        customer: String,
        /// ISO 4217 currency of the prices (three upper-case letters).
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// SKU:QUANTITY:UNIT_PRICE (unit price in minor units); repeat for more items.
        #[arg(long = "item", required = true, value_parser = parse_item)]
        items: Vec<events::catalog::OrderItem>,
        /// Sent as the Idempotency-Key header: placing again with the same key and items
        /// returns the same order instead of a second one.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the order reaches a final status and show it.
        #[arg(long)]
        wait: bool,
    },
    /// Show an order with its history.
    Show {
        /// The order id.
        order_id: String,
        /// Wait until the order reaches a final status first.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel an order (refund and restock if it was confirmed).
    Cancel {
        /// The order id.
        order_id: String,
    },
    /// List orders, newest first.
    List {
        /// Only orders in this status.
        #[arg(long, value_parser = ["pending", "reserved", "confirmed", "rejected", "cancelled"])]
        status: Option<String>,
        /// Show at most this many orders.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StockCommand {
    /// Add (or with a negative delta remove) available stock: publishes StockAdjusted.
    Adjust {
        /// The SKU.
        sku: String,
        /// Units to add; negative to remove.
        #[arg(allow_hyphen_values = true)]
        delta: i64,
    },
    /// Show a SKU's stock.
    Show {
        /// The SKU.
        sku: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum WalletCommand {
    /// Deposit money (minor units) into a customer's wallet: publishes FundsDeposited.
    Deposit {
        /// The customer whose wallet receives the money.
        customer: String,
        /// The amount in minor units of the currency (cents for EUR: 1500 is 15.00 EUR).
        amount: i64,
        /// ISO 4217 currency of the amount.
        #[arg(long, default_value = "EUR")]
        currency: String,
    },
    /// Show a customer's wallet.
    Show {
        /// The customer.
        customer: String,
    },
}

/// `SKU:QUANTITY:UNIT_PRICE`.
pub(crate) fn parse_item(s: &str) -> Result<events::catalog::OrderItem, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [sku, quantity, unit_price] = parts[..] else {
        return Err(format!(
            "{s:?} is not SKU:QUANTITY:UNIT_PRICE (for example BOOK:2:1500)"
        ));
    };
    let quantity = quantity
        .parse()
        .map_err(|_| format!("quantity {quantity:?} in {s:?} is not a whole number"))?;
    let unit_price = unit_price.parse().map_err(|_| {
        format!("unit price {unit_price:?} in {s:?} is not a whole number of minor units")
    })?;
    Ok(events::catalog::OrderItem {
        sku: sku.to_owned(),
        quantity,
        unit_price,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn items_parse_from_sku_quantity_price() {
        let item = parse_item("BOOK:2:1500").unwrap();
        assert_eq!(
            (item.sku.as_str(), item.quantity, item.unit_price),
            ("BOOK", 2, 1500)
        );
        assert!(
            parse_item("BOOK:2")
                .unwrap_err()
                .contains("SKU:QUANTITY:UNIT_PRICE")
        );
        assert!(
            parse_item("BOOK:two:1")
                .unwrap_err()
                .contains("whole number")
        );
    }

    #[test]
    fn negative_stock_deltas_are_accepted() {
        let cli = Cli::try_parse_from(["sagactl", "stock", "adjust", "BOOK", "-3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Stock(StockCommand::Adjust { delta: -3, .. })
        ));
    }
}
