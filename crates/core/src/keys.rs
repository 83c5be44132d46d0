//! Per-tenant JWT signing keys, the JWKS that publishes them, and access-token
//! signing and verification (docs/api.md, Tokens).
//!
//! - [`SigningKeyMaterial`]: a private key (PKCS#8 DER, sealed at rest by the
//!   caller) with its `kid`, algorithm and public JWK.
//! - [`Signer`]: signs [`AccessClaims`] as a JWS with `typ: at+jwt`.
//! - [`VerificationKey`] and [`Verifier`]: the public keys a tenant accepts,
//!   and verification that pins each key's algorithm (RFC 8725 §3.1: never
//!   let the token choose how it is checked).
//! - [`jwks`]: the `{"keys": [...]}` document.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::claims::AccessClaims;
use crate::crypto::{random_bytes, random_token};
use crate::error::{Error, Result};
use crate::settings::SigningAlgorithm;

/// The JWS `typ` of access tokens (RFC 9068 §2.1), so an ID token or any
/// other JWT signed by the same key can never pass as an access token.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Clock skew tolerated on `exp` between the replica that signed and the one
/// that verifies. Kept small: access tokens are short-lived on purpose.
pub const EXP_LEEWAY_SECONDS: i64 = 5;

/// RSA modulus size for new keys (and the smallest accepted).
const RSA_BITS: usize = 2048;

/// Tokens longer than this are refused before any parsing (bounds work on
/// hostile input; real access tokens are well under 2 KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

fn jwt_algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::Es256 => Algorithm::ES256,
        SigningAlgorithm::EdDsa => Algorithm::EdDSA,
        SigningAlgorithm::Rs256 => Algorithm::RS256,
    }
}

/// A tenant's private signing key with its id, algorithm and public JWK.
///
/// Zeroized on drop; `Debug` shows only `kid` and `alg`. Store
/// [`to_pkcs8_der`](Self::to_pkcs8_der) sealed (`crypto::Keyring::seal`).
#[derive(Clone)]
pub struct SigningKeyMaterial {
    kid: String,
    alg: SigningAlgorithm,
    der: Zeroizing<Vec<u8>>,
    public_jwk: Value,
}

impl SigningKeyMaterial {
    /// A new key pair for `alg` (P-256, Ed25519 or RSA-2048) with a random
    /// `kid` (16 bytes, base64url). RSA generation takes up to a second: run
    /// it on the blocking pool.
    pub fn generate(alg: SigningAlgorithm) -> Result<Self> {
        let der = match alg {
            SigningAlgorithm::Es256 => {
                let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
                p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&key)
            }
            SigningAlgorithm::EdDsa => {
                let seed: Zeroizing<[u8; 32]> = Zeroizing::new(random_bytes());
                ed25519_dalek::SigningKey::from_bytes(&seed).to_pkcs8_der()
            }
            SigningAlgorithm::Rs256 => {
                let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)
                    .map_err(|e| Error::internal(format!("RSA key generation failed: {e}")))?;
                rsa::pkcs8::EncodePrivateKey::to_pkcs8_der(&key)
            }
        }
        .map_err(|e| Error::internal(format!("encoding a new {} key failed: {e}", alg.as_str())))?;
        Self::from_pkcs8_der(alg, &random_token(16), der.as_bytes())
    }

    /// Rebuilds a key from its stored form. Fails with [`Error::Internal`] if
    /// `der` is not a PKCS#8 key of the kind `alg` needs.
    pub fn from_pkcs8_der(alg: SigningAlgorithm, kid: &str, der: &[u8]) -> Result<Self> {
        if kid.is_empty() || kid.len() > 128 || !kid.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::internal("a signing key id must be 1 to 128 printable ASCII characters"));
        }
        let bad_key = |e: &dyn fmt::Display| {
            Error::internal(format!("stored signing key {kid:?} is not a valid {} key: {e}", alg.as_str()))
        };
        let public_jwk = match alg {
            SigningAlgorithm::Es256 => {
                let key =
                    <p256::SecretKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_der(der).map_err(|e| bad_key(&e))?;
                let point = key.public_key().to_encoded_point(false);
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    return Err(bad_key(&"the public point is not affine"));
                };
                json!({ "kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y) })
            }
            SigningAlgorithm::EdDsa => {
                let key = ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|e| bad_key(&e))?;
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes()) })
            }
            SigningAlgorithm::Rs256 => {
                let key =
                    <RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_der(der).map_err(|e| bad_key(&e))?;
                if key.size() * 8 < RSA_BITS {
                    return Err(bad_key(&format!("the modulus is shorter than {RSA_BITS} bits")));
                }
                json!({ "kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()) })
            }
        };
        let mut public_jwk = public_jwk;
        if let Some(map) = public_jwk.as_object_mut() {
            map.insert("kid".into(), kid.into());
            map.insert("alg".into(), alg.as_str().into());
            map.insert("use".into(), "sig".into());
        }
        Ok(Self { kid: kid.to_owned(), alg, der: Zeroizing::new(der.to_vec()), public_jwk })
    }

    /// The key id, `kid` in token headers and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> SigningAlgorithm {
        self.alg
    }

    /// The private key as PKCS#8 DER, to seal for storage.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.der.clone()
    }

    /// The public JWK (`kty`, `crv`/`x`/`y` or `n`/`e`, `kid`, `alg`,
    /// `use: "sig"`), for the JWKS; it holds no private part.
    pub fn public_jwk(&self) -> Value {
        self.public_jwk.clone()
    }

    /// The public half, for a [`Verifier`].
    pub fn verification_key(&self) -> Result<VerificationKey> {
        VerificationKey::from_jwk(&self.kid, self.alg, &self.public_jwk)
    }
}

impl fmt::Debug for SigningKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyMaterial").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs access tokens with one key. Build it once per key and share it
/// (e.g. in an `Arc` snapshot): signing needs no lock.
///
/// The key is parsed once, here: `jsonwebtoken::encode` parses and checks
/// the PKCS#8 key again on every call, which for ES256 is a second
/// scalar multiplication per token (half of a refresh's signing time).
/// The token is the same compact JWS jsonwebtoken writes (its `Header`,
/// base64url JSON parts), signed with the same aws-lc-rs algorithms.
#[derive(Clone)]
pub struct Signer {
    kid: String,
    alg: SigningAlgorithm,
    key: std::sync::Arc<SigningKeyPair>,
}

enum SigningKeyPair {
    Es256(aws_lc_rs::signature::EcdsaKeyPair),
    EdDsa(aws_lc_rs::signature::Ed25519KeyPair),
    Rs256(aws_lc_rs::signature::RsaKeyPair),
}

impl Signer {
    /// A signer for `material`.
    pub fn new(material: &SigningKeyMaterial) -> Result<Self> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
        let invalid =
            |e: &dyn fmt::Display| Error::internal(format!("stored {} key is invalid: {e}", material.alg.as_str()));
        let key = match material.alg {
            SigningAlgorithm::Es256 => SigningKeyPair::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &material.der).map_err(|e| invalid(&e))?,
            ),
            SigningAlgorithm::EdDsa => {
                SigningKeyPair::EdDsa(Ed25519KeyPair::from_pkcs8(&material.der).map_err(|e| invalid(&e))?)
            }
            SigningAlgorithm::Rs256 => {
                SigningKeyPair::Rs256(RsaKeyPair::from_pkcs8(&material.der).map_err(|e| invalid(&e))?)
            }
        };
        Ok(Self { kid: material.kid.clone(), alg: material.alg, key: std::sync::Arc::new(key) })
    }

    /// The id of the key this signer uses.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this signer uses.
    pub fn alg(&self) -> SigningAlgorithm {
        self.alg
    }

    /// `claims` as a compact JWS with header `alg`, `kid` and `typ: at+jwt`.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String> {
        self.sign_typed(claims, ACCESS_TOKEN_TYP)
    }

    /// Any claims as a compact JWS with header `alg`, `kid` and `typ` (an
    /// ID token is `JWT`).
    pub fn sign_typed<T: serde::Serialize>(&self, claims: &T, typ: &str) -> Result<String> {
        let mut header = Header::new(jwt_algorithm(self.alg));
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        let part = |json: serde_json::Result<Vec<u8>>| {
            json.map(|bytes| b64(&bytes)).map_err(|e| Error::internal(format!("token part: {e}")))
        };
        let mut token = part(serde_json::to_vec(&header))?;
        token.push('.');
        token.push_str(&part(serde_json::to_vec(claims))?);
        let failed = |e: &dyn fmt::Display| Error::internal(format!("signing with key {:?} failed: {e}", self.kid));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signature = match &*self.key {
            SigningKeyPair::Es256(key) => key.sign(&rng, token.as_bytes()).map_err(|e| failed(&e))?.as_ref().to_vec(),
            SigningKeyPair::EdDsa(key) => key.sign(token.as_bytes()).as_ref().to_vec(),
            SigningKeyPair::Rs256(key) => {
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, token.as_bytes(), &mut signature)
                    .map_err(|e| failed(&e))?;
                signature
            }
        };
        token.push('.');
        token.push_str(&b64(&signature));
        Ok(token)
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// One public key a tenant accepts tokens from, with the one algorithm it
/// may be used with.
#[derive(Clone)]
pub struct VerificationKey {
    kid: String,
    alg: SigningAlgorithm,
    key: DecodingKey,
}

impl VerificationKey {
    /// Reads a public JWK (as stored, or as from [`SigningKeyMaterial::public_jwk`]).
    /// The JWK must be of the type `alg` needs; its `kid`, `alg` and `use`,
    /// when present, must agree with `kid`, `alg` and `"sig"`. EC points must
    /// lie on P-256, Ed25519 keys must not be of small order, and RSA moduli
    /// must have at least 2048 bits. Anything else is [`Error::Internal`].
    pub fn from_jwk(kid: &str, alg: SigningAlgorithm, jwk: &Value) -> Result<Self> {
        let bad = |why: &str| Error::internal(format!("public key {kid:?} ({}) is unusable: {why}", alg.as_str()));
        let text = |name: &str| jwk.get(name).and_then(Value::as_str);
        let bytes = |name: &str| -> Result<Vec<u8>> {
            let value = text(name).ok_or_else(|| bad(&format!("missing {name}")))?;
            URL_SAFE_NO_PAD.decode(value).map_err(|_| bad(&format!("{name} is not base64url")))
        };
        if text("kid").is_some_and(|k| k != kid) {
            return Err(bad("the JWK's kid differs"));
        }
        if text("alg").is_some_and(|a| a != alg.as_str()) {
            return Err(bad("the JWK's alg differs"));
        }
        if text("use").is_some_and(|u| u != "sig") {
            return Err(bad("the JWK is not a signature key"));
        }
        let key = match alg {
            SigningAlgorithm::Es256 => {
                if text("kty") != Some("EC") || text("crv") != Some("P-256") {
                    return Err(bad("not a P-256 key"));
                }
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("coordinates are not 32 bytes"));
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                // Invalid-curve attacks: refuse points that are not on P-256.
                p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| bad("the point is not on P-256"))?;
                DecodingKey::from_ec_der(&sec1)
            }
            SigningAlgorithm::EdDsa => {
                if text("kty") != Some("OKP") || text("crv") != Some("Ed25519") {
                    return Err(bad("not an Ed25519 key"));
                }
                let x: [u8; 32] = bytes("x")?.try_into().map_err(|_| bad("x is not 32 bytes"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| bad("x is not a valid point"))?;
                // A small-order key lets one signature verify for many messages.
                if key.is_weak() {
                    return Err(bad("the key has small order"));
                }
                DecodingKey::from_ed_der(&x)
            }
            SigningAlgorithm::Rs256 => {
                if text("kty") != Some("RSA") {
                    return Err(bad("not an RSA key"));
                }
                let (n, e) = (bytes("n")?, bytes("e")?);
                let public = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
                    .map_err(|e| bad(&format!("invalid RSA key: {e}")))?;
                if public.size() * 8 < RSA_BITS {
                    return Err(bad("the modulus is shorter than 2048 bits"));
                }
                DecodingKey::from_rsa_raw_components(&n, &e)
            }
        };
        Ok(Self { kid: kid.to_owned(), alg, key })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The only algorithm tokens under this key may use.
    pub fn alg(&self) -> SigningAlgorithm {
        self.alg
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// The public keys one tenant accepts (current, next and recent ones),
/// looked up by `kid`. Build a new one when the set changes and share it.
#[derive(Clone, Debug, Default)]
pub struct Verifier {
    keys: HashMap<String, VerificationKey>,
}

impl Verifier {
    /// A verifier accepting tokens from `keys`. Two keys with one `kid` are
    /// [`Error::Internal`]: which one a token meant would be ambiguous.
    pub fn new(keys: impl IntoIterator<Item = VerificationKey>) -> Result<Self> {
        let mut map = HashMap::new();
        for key in keys {
            match map.entry(key.kid.clone()) {
                Entry::Occupied(_) => {
                    return Err(Error::internal(format!("two verification keys share the kid {:?}", key.kid)));
                }
                Entry::Vacant(slot) => {
                    slot.insert(key);
                }
            }
        }
        Ok(Self { keys: map })
    }

    /// Verifies an access token and returns its claims.
    ///
    /// The key is chosen by the header's `kid` and the algorithm by the key,
    /// never by the header: a header `alg` other than the key's (`none`,
    /// `HS256` keyed with the public key, another curve) is refused. Also
    /// required: `typ` `at+jwt` (RFC 9068), a valid signature, `iss` equal to
    /// `issuer` and `aud` to `audience` (so one tenant's token never works at
    /// another), and `exp` after `now` (Unix seconds) give or take
    /// [`EXP_LEEWAY_SECONDS`]. Every failure is [`Error::Unauthenticated`];
    /// the reason goes to the debug log only.
    pub fn verify(&self, token: &str, issuer: &str, audience: &str, now: i64) -> Result<AccessClaims> {
        self.verify_published(token, issuer, audience, now, |_| true)
    }

    /// [`Verifier::verify`], accepting only keys for which `published(kid)`
    /// holds: a key verifies exactly as long as it is published.
    pub fn verify_published(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
        published: impl Fn(&str) -> bool,
    ) -> Result<AccessClaims> {
        self.check(token, issuer, audience, now, published).map_err(|reason| {
            tracing::debug!(reason, "access token refused");
            Error::Unauthenticated
        })
    }

    /// The key a token of ours names by `kid`, while it is published, and
    /// the token's header: its algorithm must be the key's (RFC 8725 §3.1:
    /// the key decides, so `none`, an HMAC keyed by the public key or another
    /// curve fail here) and it has no `crit` (RFC 7515 §4.1.11: we
    /// understand no extension, so any is critical).
    fn key_of(
        &self,
        token: &str,
        published: impl Fn(&str) -> bool,
    ) -> std::result::Result<(&VerificationKey, jsonwebtoken::Header), &'static str> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long");
        }
        // `alg: none` and unknown algorithms fail here: jsonwebtoken has no
        // variant for them.
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed header")?;
        let kid = header.kid.as_deref().ok_or("no kid")?;
        let key = self.keys.get(kid).ok_or("unknown kid")?;
        if !published(kid) {
            return Err("key no longer published");
        }
        if header.alg != jwt_algorithm(key.alg) {
            return Err("alg differs from the key's");
        }
        if header.crit.is_some() {
            return Err("crit header present");
        }
        Ok((key, header))
    }

    fn check(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: i64,
        published: impl Fn(&str) -> bool,
    ) -> std::result::Result<AccessClaims, &'static str> {
        let (key, header) = self.key_of(token, published)?;
        let alg = jwt_algorithm(key.alg);
        let typ_ok = header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || t.eq_ignore_ascii_case("application/at+jwt"));
        if !typ_ok {
            return Err("typ is not at+jwt");
        }

        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        // Time is checked below against the caller's clock, not the library's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key.key, &validation)
            .map_err(|_| "bad signature or claims")?
            .claims;

        if claims.iss != issuer || claims.aud != audience {
            return Err("wrong issuer or audience");
        }
        if now >= claims.exp.saturating_add(EXP_LEEWAY_SECONDS) {
            return Err("expired");
        }
        Ok(claims)
    }
}

impl Verifier {
    /// Verifies a JWT this tenant signed with `typ` `JWT` (an ID token,
    /// given back as `id_token_hint`): the key and algorithm as for access
    /// tokens, and `iss`. Neither `aud` nor `exp` is required: an expired
    /// hint still names who signed in (OpenID Connect RP-Initiated Logout).
    pub fn verify_id_token(
        &self,
        token: &str,
        issuer: &str,
        published: impl Fn(&str) -> bool,
    ) -> Result<crate::claims::IdClaims> {
        let check = || -> std::result::Result<crate::claims::IdClaims, &'static str> {
            let (key, header) = self.key_of(token, &published)?;
            let alg = jwt_algorithm(key.alg);
            if !header.typ.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("JWT")) {
                return Err("typ is not JWT");
            }
            let mut validation = Validation::new(alg);
            validation.set_required_spec_claims(&["iss"]);
            validation.set_issuer(&[issuer]);
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            let claims = jsonwebtoken::decode::<crate::claims::IdClaims>(token, &key.key, &validation)
                .map_err(|_| "bad signature or claims")?
                .claims;
            if claims.iss != issuer {
                return Err("wrong issuer");
            }
            Ok(claims)
        };
        check().map_err(|reason| {
            tracing::debug!(reason, "ID token refused");
            Error::Unauthenticated
        })
    }
}

/// The JWKS document: `{"keys": [...]}`.
pub fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;
    use jsonwebtoken::EncodingKey;
    use uuid::Uuid;

    const ISS: &str = "https://auth.example.com/t/acme";
    const AUD: &str = "acme";
    const NOW: i64 = 1_700_000_000;

    /// RSA generation is slow in debug builds; share one key.
    static RSA_KEY: LazyLock<SigningKeyMaterial> =
        LazyLock::new(|| SigningKeyMaterial::generate(SigningAlgorithm::Rs256).unwrap());

    fn key(alg: SigningAlgorithm) -> SigningKeyMaterial {
        match alg {
            SigningAlgorithm::Rs256 => RSA_KEY.clone(),
            _ => SigningKeyMaterial::generate(alg).unwrap(),
        }
    }

    const ALGS: [SigningAlgorithm; 3] = [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa, SigningAlgorithm::Rs256];

    fn claims() -> AccessClaims {
        AccessClaims {
            iss: ISS.into(),
            sub: Uuid::new_v4(),
            aud: AUD.into(),
            tid: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            jti: Uuid::new_v4(),
            iat: NOW,
            exp: NOW + 900,
            amr: vec!["pwd".into()],
            role: "user".into(),
            mfa_enrollment_required: false,
            client_id: None,
            scope: None,
            sso_sid: None,
        }
    }

    fn verifier(keys: &[&SigningKeyMaterial]) -> Verifier {
        Verifier::new(keys.iter().map(|k| k.verification_key().unwrap())).unwrap()
    }

    fn part(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    fn refused(result: Result<AccessClaims>) -> bool {
        matches!(result, Err(Error::Unauthenticated))
    }

    #[test]
    fn each_algorithm_round_trips() {
        for alg in ALGS {
            let material = key(alg);
            let token = Signer::new(&material).unwrap().sign(&claims()).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, jwt_algorithm(alg));
            assert_eq!(header.kid.as_deref(), Some(material.kid()));
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));

            let expected = claims();
            let token = Signer::new(&material).unwrap().sign(&expected).unwrap();
            let got = verifier(&[&material]).verify(&token, ISS, AUD, NOW).unwrap();
            assert_eq!(got, expected, "{alg:?}");
        }
    }

    #[test]
    fn keys_survive_their_pkcs8_form() {
        for alg in ALGS {
            let material = key(alg);
            let der = material.to_pkcs8_der();
            let again = SigningKeyMaterial::from_pkcs8_der(alg, material.kid(), &der).unwrap();
            assert_eq!(again.public_jwk(), material.public_jwk());
            // A token signed by the reloaded key verifies under the original.
            let token = Signer::new(&again).unwrap().sign(&claims()).unwrap();
            verifier(&[&material]).verify(&token, ISS, AUD, NOW).unwrap();
        }
        let ec = key(SigningAlgorithm::Es256);
        assert!(SigningKeyMaterial::from_pkcs8_der(SigningAlgorithm::EdDsa, "k", &ec.to_pkcs8_der()).is_err());
        assert!(SigningKeyMaterial::from_pkcs8_der(SigningAlgorithm::Es256, "k", b"junk").is_err());
        assert!(SigningKeyMaterial::from_pkcs8_der(SigningAlgorithm::Es256, "", &ec.to_pkcs8_der()).is_err());
    }

    #[test]
    fn public_jwks_have_the_standard_members_and_no_private_ones() {
        for alg in ALGS {
            let material = key(alg);
            let jwk = material.public_jwk();
            assert_eq!(jwk["kid"], material.kid());
            assert_eq!(jwk["alg"], alg.as_str());
            assert_eq!(jwk["use"], "sig");
            match alg {
                SigningAlgorithm::Es256 => {
                    assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("EC"), Some("P-256")));
                    assert!(jwk["x"].is_string() && jwk["y"].is_string());
                }
                SigningAlgorithm::EdDsa => {
                    assert_eq!((jwk["kty"].as_str(), jwk["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
                    assert!(jwk["x"].is_string());
                }
                SigningAlgorithm::Rs256 => {
                    assert_eq!(jwk["kty"], "RSA");
                    assert_eq!(jwk["e"], "AQAB");
                    assert_eq!(URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap().len(), 256);
                }
            }
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(jwk.get(private).is_none(), "{alg:?} leaks {private}");
            }
            // Standard libraries read it: jsonwebtoken's own JWK type.
            let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk).unwrap();
            assert_eq!(parsed.common.key_id.as_deref(), Some(material.kid()));
        }
    }

    #[test]
    fn kids_are_random_and_url_safe() {
        let a = key(SigningAlgorithm::Es256);
        let b = key(SigningAlgorithm::Es256);
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 22);
        assert!(a.kid().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let material = key(SigningAlgorithm::EdDsa);
        let signer = Signer::new(&material).unwrap();
        let shown = format!("{material:?} {signer:?}");
        assert!(shown.contains(material.kid()));
        let der_b64 = URL_SAFE_NO_PAD.encode(material.to_pkcs8_der().as_slice());
        assert!(!shown.contains(&der_b64[..16]), "{shown}");
    }

    #[test]
    fn alg_none_is_refused() {
        let material = key(SigningAlgorithm::Es256);
        let v = verifier(&[&material]);
        let body = part(&serde_json::to_value(claims()).unwrap());
        for alg in ["none", "None", "NONE"] {
            let header = part(&json!({ "alg": alg, "typ": "at+jwt", "kid": material.kid() }));
            assert!(refused(v.verify(&format!("{header}.{body}."), ISS, AUD, NOW)), "{alg}");
        }
        // The same claims properly signed do pass: the refusal is the alg.
        let token = Signer::new(&material).unwrap().sign(&claims()).unwrap();
        assert!(v.verify(&token, ISS, AUD, NOW).is_ok());
    }

    #[test]
    fn hs256_keyed_with_the_public_key_is_refused() {
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::Rs256] {
            let material = key(alg);
            let v = verifier(&[&material]);
            let jwk = material.public_jwk();
            let mut secrets: Vec<Vec<u8>> = vec![serde_json::to_vec(&jwk).unwrap()];
            match alg {
                SigningAlgorithm::Es256 => {
                    let secret =
                        <p256::SecretKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_der(&material.to_pkcs8_der())
                            .unwrap();
                    let public = secret.public_key();
                    secrets.push(public.to_encoded_point(false).as_bytes().to_vec());
                    let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(&public, Default::default()).unwrap();
                    secrets.push(pem.into_bytes());
                }
                _ => {
                    let secret =
                        <RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_der(&material.to_pkcs8_der())
                            .unwrap();
                    let public = secret.to_public_key();
                    let der = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_der(&public).unwrap();
                    secrets.push(der.as_bytes().to_vec());
                    let pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(&public, Default::default()).unwrap();
                    secrets.push(pem.into_bytes());
                }
            }
            for secret in secrets {
                for hs in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                    let mut header = Header::new(hs);
                    header.typ = Some("at+jwt".into());
                    header.kid = Some(material.kid().into());
                    let token = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
                    assert!(refused(v.verify(&token, ISS, AUD, NOW)), "{alg:?} {hs:?}");
                }
            }
        }
    }

    #[test]
    fn a_header_alg_other_than_the_keys_is_refused() {
        // An Ed25519 token presented under the kid of an ES256 key.
        let ec = key(SigningAlgorithm::Es256);
        let ed = SigningKeyMaterial::from_pkcs8_der(
            SigningAlgorithm::EdDsa,
            ec.kid(),
            &key(SigningAlgorithm::EdDsa).to_pkcs8_der(),
        )
        .unwrap();
        let token = Signer::new(&ed).unwrap().sign(&claims()).unwrap();
        assert!(refused(verifier(&[&ec]).verify(&token, ISS, AUD, NOW)));
    }

    #[test]
    fn unknown_or_missing_kid_is_refused() {
        let a = key(SigningAlgorithm::Es256);
        let b = key(SigningAlgorithm::Es256);
        let token = Signer::new(&a).unwrap().sign(&claims()).unwrap();
        assert!(refused(verifier(&[&b]).verify(&token, ISS, AUD, NOW)));
        assert!(refused(Verifier::default().verify(&token, ISS, AUD, NOW)));

        // Same signature bytes, header without a kid.
        let (_, rest) = token.split_once('.').unwrap();
        let header = part(&json!({ "alg": "ES256", "typ": "at+jwt" }));
        assert!(refused(verifier(&[&a]).verify(&format!("{header}.{rest}"), ISS, AUD, NOW)));
    }

    #[test]
    fn another_key_with_the_same_kid_is_refused() {
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let genuine = key(alg);
            let impostor = SigningKeyMaterial::from_pkcs8_der(alg, genuine.kid(), &key(alg).to_pkcs8_der()).unwrap();
            let token = Signer::new(&impostor).unwrap().sign(&claims()).unwrap();
            assert!(refused(verifier(&[&genuine]).verify(&token, ISS, AUD, NOW)), "{alg:?}");
        }
    }

    #[test]
    fn expired_tokens_are_refused_with_only_a_few_seconds_of_leeway() {
        let material = key(SigningAlgorithm::EdDsa);
        let v = verifier(&[&material]);
        let c = claims();
        let token = Signer::new(&material).unwrap().sign(&c).unwrap();
        assert!(v.verify(&token, ISS, AUD, c.exp - 1).is_ok());
        assert!(v.verify(&token, ISS, AUD, c.exp + EXP_LEEWAY_SECONDS - 1).is_ok());
        assert!(refused(v.verify(&token, ISS, AUD, c.exp + EXP_LEEWAY_SECONDS)));
        assert!(refused(v.verify(&token, ISS, AUD, c.exp + 3600)));
    }

    #[test]
    fn wrong_issuer_or_audience_is_refused() {
        let material = key(SigningAlgorithm::Es256);
        let v = verifier(&[&material]);
        let token = Signer::new(&material).unwrap().sign(&claims()).unwrap();
        assert!(refused(v.verify(&token, "https://auth.example.com/t/other", AUD, NOW)));
        assert!(refused(v.verify(&token, ISS, "other", NOW)));
        assert!(v.verify(&token, ISS, AUD, NOW).is_ok());
    }

    #[test]
    fn a_typ_other_than_at_jwt_is_refused() {
        let material = key(SigningAlgorithm::Es256);
        let v = verifier(&[&material]);
        let signer = EncodingKey::from_ec_der(&material.to_pkcs8_der());
        for typ in [Some("JWT"), None, Some("id+jwt")] {
            let mut header = Header::new(Algorithm::ES256);
            header.typ = typ.map(str::to_owned);
            header.kid = Some(material.kid().into());
            let token = jsonwebtoken::encode(&header, &claims(), &signer).unwrap();
            assert!(refused(v.verify(&token, ISS, AUD, NOW)), "{typ:?}");
        }
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("application/at+jwt".into());
        header.kid = Some(material.kid().into());
        let token = jsonwebtoken::encode(&header, &claims(), &signer).unwrap();
        assert!(v.verify(&token, ISS, AUD, NOW).is_ok());
    }

    #[test]
    fn tampered_claims_and_garbage_are_refused() {
        let material = key(SigningAlgorithm::Es256);
        let v = verifier(&[&material]);
        let token = Signer::new(&material).unwrap().sign(&claims()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut admin = serde_json::to_value(claims()).unwrap();
        admin["role"] = "admin".into();
        let forged = format!("{}.{}.{}", parts[0], part(&admin), parts[2]);
        assert!(refused(v.verify(&forged, ISS, AUD, NOW)));
        for garbage in ["", "a.b.c", "....", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(refused(v.verify(garbage, ISS, AUD, NOW)));
        }
    }

    #[test]
    fn verification_keys_reject_bad_jwks() {
        let ec = key(SigningAlgorithm::Es256);
        let jwk = ec.public_jwk();
        // Wrong algorithm for the key type, kid mismatch.
        assert!(VerificationKey::from_jwk(ec.kid(), SigningAlgorithm::EdDsa, &jwk).is_err());
        assert!(VerificationKey::from_jwk("other", SigningAlgorithm::Es256, &jwk).is_err());
        // A point moved off the curve (invalid-curve attack).
        let mut off_curve = jwk.clone();
        let mut y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
        y[31] ^= 1;
        off_curve["y"] = b64(&y).into();
        assert!(VerificationKey::from_jwk(ec.kid(), SigningAlgorithm::Es256, &off_curve).is_err());
        // A small-order Ed25519 point (the identity).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&identity) });
        assert!(VerificationKey::from_jwk("w", SigningAlgorithm::EdDsa, &weak).is_err());
        // A short RSA modulus.
        let short = json!({ "kty": "RSA", "n": b64(&[0xc5; 128]), "e": "AQAB" });
        assert!(VerificationKey::from_jwk("r", SigningAlgorithm::Rs256, &short).is_err());
    }

    #[test]
    fn duplicate_kids_are_refused_and_several_keys_coexist() {
        let a = key(SigningAlgorithm::Es256);
        let b = key(SigningAlgorithm::EdDsa);
        let dup = [a.verification_key().unwrap(), a.verification_key().unwrap()];
        assert!(Verifier::new(dup).is_err());
        let v = verifier(&[&a, &b]);
        for m in [&a, &b] {
            let token = Signer::new(m).unwrap().sign(&claims()).unwrap();
            assert!(v.verify(&token, ISS, AUD, NOW).is_ok());
        }
    }

    #[test]
    fn jwks_wraps_the_keys() {
        let a = key(SigningAlgorithm::Es256).public_jwk();
        let b = key(SigningAlgorithm::EdDsa).public_jwk();
        let doc = jwks(&[a.clone(), b.clone()]);
        assert_eq!(doc, json!({ "keys": [a, b] }));
        assert_eq!(jwks(&[]), json!({ "keys": [] }));
    }
}
