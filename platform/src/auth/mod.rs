//! Identity at the HTTP edge: every request but `/healthz*` and `/metrics` carries a
//! bearer JWT, verified here against a JWKS (a file or a URL), and handlers receive the
//! verified [`Caller`].
//!
//! Only ES256 and RS256 are accepted: the algorithm a token names must be one of those and
//! must match the key its `kid` names, so neither `alg: none` nor a symmetric algorithm
//! keyed with a public key can pass. `iss`, `aud`, `exp` and `sub` are required; `exp` gets
//! at most [`LEEWAY_SECS`](verify::LEEWAY_SECS) of clock skew. An unknown `kid` makes the
//! set be read again (at most once per
//! [`REFRESH_MIN_INTERVAL`](verify::REFRESH_MIN_INTERVAL)), so a rotated key is picked up
//! without a restart and a flood of made-up `kid`s cannot turn into a flood of JWKS fetches.
//!
//! A token that passed is remembered, by its SHA-256, until it expires (at most
//! [`VERIFIED_FOR`](verify::VERIFIED_FOR)): a client sends the same token with every
//! request, and checking an ES256 signature costs more CPU than everything else a
//! `POST /orders` does in the service. Only the very same token is let through on the
//! memory of it; a new read of the key set forgets every token.
//!
//! `SAGA_AUTH=off` turns checking off (every caller is then an operator) for throwaway
//! local runs; the service warns at start and its health body says so.
//!
//! [`dev`] holds what local development needs: the development key pair and a token
//! signer, shared by `sagactl` and the test harness.
//!
//! The module's parts: [`verify`] (the JWKS, the checks a token passes, the memory of
//! tokens that passed, `SAGA_AUTH`), [`caller`] (the identity a token proves and what its
//! roles allow), [`middleware`] (the bearer middleware, the [`Caller`] extractor, the open
//! paths and the 401), [`dev`] (the development key pair and token signing).

mod caller;
pub mod dev;
mod middleware;
mod verify;

pub use caller::{Caller, forbidden};
pub use middleware::is_open;
pub(crate) use middleware::require_bearer;
pub(crate) use verify::{Authenticator, mode_label};

/// `iss` unless `SAGA_AUTH_ISSUER` says otherwise.
pub const DEFAULT_ISSUER: &str = "order-saga-dev";
/// The audience unless `SAGA_AUTH_AUDIENCE` says otherwise.
pub const DEFAULT_AUDIENCE: &str = "order-saga";
