//! The one crypto backend of the whole tree, ring, installed for both of its users:
//! rustls (TLS to PostgreSQL, RabbitMQ and HTTP) and jsonwebtoken (the bearer tokens).
//!
//! Neither crate is built with a provider of its own: each would bring aws-lc, a second
//! C library to compile (twice in a release build, once more for sqlx's macros).
//! [`install`] makes ring the process's provider for both; call it before the first TLS
//! connection or token (every service's `main`, sagactl's, the test harness do).
//!
//! The JWT provider does what the contract asks of tokens and nothing more: ES256 and
//! RS256 (to sign and to verify), and HS256 so that a test can forge a symmetric token and
//! see it refused. Any other algorithm is an error, never a panic.

use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, RsaPublicKeyComponents,
    UnparsedPublicKey,
};
use ring::{digest, hmac};

/// Makes ring the process-wide provider of rustls and of jsonwebtoken. Idempotent.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Either can only fail because a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = JWT_PROVIDER.install_default();
    });
}

/// A builder for an HTTP client on ring's TLS: every HTTP client of the project starts
/// here (reqwest has no provider of its own and would panic without [`install`]).
pub fn http_client() -> reqwest::ClientBuilder {
    install();
    reqwest::Client::builder()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// A new EC P-256 private key in PKCS#8 (DER).
pub fn generate_p256_pkcs8() -> Result<Vec<u8>, ring::error::Unspecified> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
}

static JWT_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        ec_pub_components_from_private_key: ec_components_from_private_key,
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        compute_digest,
    },
};

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    match (algorithm, key.family()) {
        (Algorithm::ES256, AlgorithmFamily::Ec) => {
            let pair = EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                key.as_bytes(),
                &SystemRandom::new(),
            )
            .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
            Ok(Box::new(Es256Signer(pair)))
        }
        (Algorithm::RS256, AlgorithmFamily::Rsa) => {
            // jsonwebtoken keeps an RSA private key as PKCS#1 (RSAPrivateKey) DER.
            let pair = RsaKeyPair::from_der(key.as_bytes())
                .or_else(|_| RsaKeyPair::from_pkcs8(key.as_bytes()))
                .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?;
            Ok(Box::new(Rs256Signer(pair)))
        }
        (Algorithm::HS256, AlgorithmFamily::Hmac) => Ok(Box::new(Hs256(hmac::Key::new(
            hmac::HMAC_SHA256,
            key.as_bytes(),
        )))),
        (Algorithm::ES256 | Algorithm::RS256 | Algorithm::HS256, _) => {
            Err(ErrorKind::InvalidKeyFormat.into())
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match (algorithm, key.family()) {
        (Algorithm::ES256, AlgorithmFamily::Ec) => {
            Ok(Box::new(Es256Verifier(key.try_get_as_bytes()?.to_vec())))
        }
        (Algorithm::RS256, AlgorithmFamily::Rsa) => Ok(Box::new(Rs256Verifier(key.clone()))),
        (Algorithm::HS256, AlgorithmFamily::Hmac) => Ok(Box::new(Hs256(hmac::Key::new(
            hmac::HMAC_SHA256,
            key.try_get_as_bytes()?,
        )))),
        (Algorithm::ES256 | Algorithm::RS256 | Algorithm::HS256, _) => {
            Err(ErrorKind::InvalidKeyFormat.into())
        }
        _ => Err(ErrorKind::InvalidAlgorithm.into()),
    }
}

fn ec_components_from_private_key(
    pkcs8: &[u8],
    algorithm: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
    if algorithm != Algorithm::ES256 {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8,
        &SystemRandom::new(),
    )
    .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    // An uncompressed point: 0x04, then x and y of 32 bytes each.
    match pair.public_key().as_ref() {
        [4, point @ ..] if point.len() == 64 => {
            let (x, y) = point.split_at(32);
            Ok((EllipticCurve::P256, x.to_vec(), y.to_vec()))
        }
        _ => Err(ErrorKind::InvalidEcdsaKey.into()),
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(digest::digest(algorithm, data).as_ref().to_vec())
}

struct Es256Signer(EcdsaKeyPair);

impl Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let signed = self
            .0
            .sign(&SystemRandom::new(), msg)
            .map_err(|_| signature::Error::new())?;
        Ok(signed.as_ref().to_vec())
    }
}

impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

/// The public key as an uncompressed point, as jsonwebtoken keeps an EC key.
struct Es256Verifier(Vec<u8>);

impl Verifier<Vec<u8>> for Es256Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(msg, signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Es256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

struct Rs256Signer(RsaKeyPair);

impl Signer<Vec<u8>> for Rs256Signer {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut signed = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut signed)
            .map_err(|_| signature::Error::new())?;
        Ok(signed)
    }
}

impl JwtSigner for Rs256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

/// A key from a JWKS comes as its modulus and exponent; one from a PEM as DER.
struct Rs256Verifier(DecodingKey);

impl Verifier<Vec<u8>> for Rs256Verifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match self.0.kind() {
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, msg, signature)
            }
            DecodingKeyKind::SecretOrDer(der) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der).verify(msg, signature)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Rs256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::RS256
    }
}

struct Hs256(hmac::Key);

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(hmac::sign(&self.0, msg).as_ref().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        hmac::verify(&self.0, msg, signature).map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation};
    use serde_json::{Value, json};

    fn claims() -> Value {
        json!({"sub": "ada", "exp": jsonwebtoken::get_current_timestamp() + 60})
    }

    fn validation(algorithm: Algorithm) -> Validation {
        let mut v = Validation::new(algorithm);
        v.validate_aud = false;
        v
    }

    #[test]
    fn an_es256_token_signed_here_verifies_with_its_jwk_and_not_with_another_key() {
        install();
        let pem = |der: Vec<u8>| pem::encode(&pem::Pem::new("PRIVATE KEY", der));
        let private = pem(generate_p256_pkcs8().unwrap());
        let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &key).unwrap();
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        let public = DecodingKey::from_jwk(&jwk).unwrap();
        let decoded =
            jsonwebtoken::decode::<Value>(&token, &public, &validation(Algorithm::ES256)).unwrap();
        assert_eq!(decoded.claims["sub"], "ada");

        let other = pem(generate_p256_pkcs8().unwrap());
        let other_key = EncodingKey::from_ec_pem(other.as_bytes()).unwrap();
        let other_jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&other_key, Algorithm::ES256).unwrap();
        let wrong = DecodingKey::from_jwk(&other_jwk).unwrap();
        let refused = jsonwebtoken::decode::<Value>(&token, &wrong, &validation(Algorithm::ES256));
        assert!(refused.is_err(), "a token verified with another key");
    }

    /// A 2048-bit RSA key kept for this test only, as an identity provider would hold it.
    const RSA_PKCS8_PEM: &str = include_str!("crypto/test-rsa-key.pem");

    #[test]
    fn an_rs256_token_verifies_with_its_modulus_and_exponent_and_not_once_altered() {
        install();
        let key = EncodingKey::from_rsa_pem(RSA_PKCS8_PEM.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), &key).unwrap();

        let der = pem::parse(RSA_PKCS8_PEM).unwrap().into_contents();
        let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
        let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let public = DecodingKey::from_rsa_raw_components(&components.n, &components.e);
        let decoded =
            jsonwebtoken::decode::<Value>(&token, &public, &validation(Algorithm::RS256)).unwrap();
        assert_eq!(decoded.claims["sub"], "ada");

        // The same signature over other claims.
        let parts: Vec<&str> = token.split('.').collect();
        let other =
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &json!({"sub": "eve"}), &key)
                .unwrap();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        let refused =
            jsonwebtoken::decode::<Value>(&forged, &public, &validation(Algorithm::RS256));
        assert!(
            refused.is_err(),
            "altered claims passed with the original signature"
        );
    }

    #[test]
    fn an_algorithm_the_provider_does_not_hold_is_an_error_not_a_panic() {
        install();
        let key = EncodingKey::from_secret(b"secret").unwrap();
        let header = Header::new(Algorithm::HS512);
        assert!(jsonwebtoken::encode(&header, &claims(), &key).is_err());
    }
}
