//! One error type rendered as the contract's JSON (`{"error", "message"}`), and a JSON body
//! extractor whose rejections are such errors.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An error answered to an HTTP client. Internal causes are logged, never returned.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Whole seconds sent as `Retry-After`: set on a refusal that says when to come back.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the client to try again after `seconds` (`Retry-After`).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// A failure of ours (typically the database being away): logged with its cause, answered
    /// as 503 so clients know to retry, without internals.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service cannot answer right now; try again shortly",
        )
    }
}

impl From<sqlx::Error> for ApiError {
    /// A value the database cannot store (a NUL character, a number out of range, a broken
    /// constraint) is the client's bad input: 400. Anything else is ours: 503.
    fn from(e: sqlx::Error) -> Self {
        match messaging::failure::classify_sqlx(&e) {
            messaging::failure::FailureClass::BadInput => {
                tracing::info!(error = %e, "request refused: a value the database cannot store");
                ApiError::bad_request(
                    messaging::failure::bad_input_code(&e),
                    "the request holds a value that cannot be stored \
                     (a NUL character, a number out of range, or a value breaking a rule)",
                )
            }
            _ => ApiError::unavailable(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `Json<T>` whose rejections (bad JSON, wrong content type, body too large) are answered
/// in the contract's error shape with the right 4xx status.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        _ => "invalid_json",
    };
    // A body that parses but does not fit the request's shape is bad input like any
    // other: the contract's 400, not axum's 422.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!(
            "request bodies are limited to {} KiB",
            MAX_BODY_BYTES / 1024
        )
    } else {
        rejection.body_text()
    };
    // Clients must see a 4xx for anything wrong with their body.
    let status = if status.is_client_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_with_a_retry_time_carries_retry_after() {
        let response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "later")
            .retry_after(2)
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let plain = ApiError::not_found("no such thing").into_response();
        assert!(plain.headers().get(header::RETRY_AFTER).is_none());
    }
}
