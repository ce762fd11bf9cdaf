//! The format rules that several payloads share, or that the services' HTTP edges reuse:
//! the limits of an order, the SKU and currency patterns, and the checks of one field each.

/// Most items an order may hold.
pub const MAX_ITEMS: usize = 100;
/// Largest price of one unit: no order of [`MAX_ITEMS`] lines of [`MAX_QUANTITY`] each
/// can then overflow its total.
pub const MAX_UNIT_PRICE: i64 = i64::MAX / (MAX_ITEMS as i64 * MAX_QUANTITY);
/// Largest quantity of one item.
pub(crate) const MAX_QUANTITY: i64 = 10_000;
/// Longest customer id.
pub const MAX_CUSTOMER_ID_CHARS: usize = 64;
/// What [`check_sku`] accepts, as a regular expression (for the published JSON Schemas).
pub(crate) const SKU_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// What [`check_currency`] accepts, as a regular expression (for the published JSON Schemas).
pub const CURRENCY_PATTERN: &str = "^[A-Z]{3}$";

pub fn check_sku(sku: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "sku {sku:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"
        ))
    }
}

pub fn check_customer(customer_id: &str) -> Result<(), String> {
    if customer_id.is_empty() || customer_id.chars().count() > MAX_CUSTOMER_ID_CHARS {
        Err("customer_id must be 1 to 64 characters".into())
    } else {
        Ok(())
    }
}

pub fn check_currency(currency: &str) -> Result<(), String> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "currency {currency:?} must be 3 upper-case letters (ISO 4217)"
        ))
    }
}

pub fn check_unit_price(unit_price: i64) -> Result<(), String> {
    if (0..=MAX_UNIT_PRICE).contains(&unit_price) {
        Ok(())
    } else {
        Err(format!(
            "unit_price {unit_price} must be 0 to {MAX_UNIT_PRICE}"
        ))
    }
}

pub fn check_quantity(quantity: i64) -> Result<(), String> {
    if (1..=MAX_QUANTITY).contains(&quantity) {
        Ok(())
    } else {
        Err(format!("quantity {quantity} must be 1 to {MAX_QUANTITY}"))
    }
}

pub(super) fn check_non_negative(field: &str, value: i64) -> Result<(), String> {
    if value >= 0 {
        Ok(())
    } else {
        Err(format!("{field} must not be negative"))
    }
}

pub(super) fn check_count(field: &str, n: usize) -> Result<(), String> {
    if (1..=MAX_ITEMS).contains(&n) {
        Ok(())
    } else {
        Err(format!("{field} must hold 1 to {MAX_ITEMS} entries"))
    }
}

/// Largest quantity of one SKU in a reservation: inventory merges an order's lines per
/// SKU, so up to `MAX_ITEMS` lines of `MAX_QUANTITY` each may add up in one item.
pub(crate) const MAX_MERGED_QUANTITY: i64 = MAX_ITEMS as i64 * MAX_QUANTITY;
