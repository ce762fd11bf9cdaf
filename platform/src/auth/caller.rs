//! The verified identity of a request, and what its roles allow: a customer acts for
//! itself, an operator for anyone and on the operators' endpoints.

use axum::http::StatusCode;

use crate::ApiError;

/// The verified identity of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The customer id, or the operator's name.
    pub sub: String,
    pub customer: bool,
    pub operator: bool,
}

impl Caller {
    /// Whether the caller may act on `customer_id`'s orders and wallet.
    pub fn may_act_for(&self, customer_id: &str) -> bool {
        self.operator || (self.customer && self.sub == customer_id)
    }

    /// 403 unless the caller is an operator (list endpoints, internals).
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.operator {
            Ok(())
        } else {
            Err(forbidden("this endpoint is for operators"))
        }
    }

    /// 403 unless the caller holds at least one role of the contract.
    pub fn require_any_role(&self) -> Result<(), ApiError> {
        if self.operator || self.customer {
            Ok(())
        } else {
            Err(forbidden(
                "the token grants neither the customer nor the operator role",
            ))
        }
    }
}

/// 403 with the contract's error body.
pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}
