//! A tenant's signing keys as requests use them: the current signer, a
//! verifier over every published key, and the JWKS.
//!
//! Lifecycle: a key is *next* from creation until `activates_at`, *current*
//! from then until a newer key (by creation) activates, and *retired* after
//! that. Next keys are published before they sign (resource servers that
//! cached the JWKS already know them); retired keys stay published, and
//! verify, until every token they signed has expired, then rotation deletes
//! them. A key created later but activated sooner (`immediate`, or a change
//! of algorithm) supersedes a pending one: the pending key never signs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use authd_core::claims::AccessClaims;
use authd_core::crypto::{Keyring, SealContext};
use authd_core::keys::{EXP_LEEWAY_SECONDS, Signer, SigningKeyMaterial, Verifier};
use authd_core::settings::{MAX_ACCESS_TOKEN_MINUTES, SigningAlgorithm};
use authd_core::{Error, Result, TenantId, UserId};
use authd_store::SigningKeyRecord;
use chrono::{DateTime, Utc};

use crate::Deps;
use crate::audit::{self, RequestMeta, kinds};
use crate::runtime::TenantRuntime;

pub(crate) const SEAL_PURPOSE: &str = "signing-key";

/// How long a retired key stays published: the longest access-token lifetime
/// plus clock-skew margin.
fn retirement_window() -> chrono::Duration {
    chrono::Duration::minutes(i64::from(MAX_ACCESS_TOKEN_MINUTES) + 5)
}

/// Public facts about a key (the `SigningKey` GraphQL type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    pub created_at: DateTime<Utc>,
    pub activates_at: DateTime<Utc>,
}

struct LoadedKey {
    info: KeyInfo,
    signer: Signer,
    jwk: serde_json::Value,
}

/// The decoded keys of one tenant, oldest first (by creation).
pub struct KeySet {
    keys: Vec<LoadedKey>,
    verifier: Verifier,
    /// Access tokens these keys verified, by their exact text (see
    /// [`KeySet::verify`]).
    verified: parking_lot::RwLock<HashMap<Box<str>, Verified>>,
}

/// How many verified access tokens a key set remembers. A client repeats its
/// access token on every call until it refreshes, so a few thousand cover
/// the active sessions of a busy tenant; past that the oldest half is not
/// worth tracking: the memory is cleared and refilled.
const VERIFIED_TOKENS: usize = 4096;

/// A token that passed the full check, with what is needed to check it
/// again without its signature.
struct Verified {
    claims: AccessClaims,
    kid: String,
}

impl KeySet {
    /// Opens the sealed private keys and builds signers and the verifier.
    pub fn build(
        keyring: &Keyring,
        tenant: TenantId,
        records: &[SigningKeyRecord],
        _now: DateTime<Utc>,
    ) -> Result<Self> {
        let mut keys = Vec::with_capacity(records.len());
        let mut verification = Vec::with_capacity(records.len());
        for r in records {
            let der =
                keyring.open(&r.private_key_sealed, &SealContext { tenant, purpose: SEAL_PURPOSE, row: &r.kid })?;
            let material = SigningKeyMaterial::from_pkcs8_der(r.algorithm, &r.kid, &der)?;
            verification.push(material.verification_key()?);
            keys.push(LoadedKey {
                info: KeyInfo {
                    kid: r.kid.clone(),
                    algorithm: r.algorithm,
                    created_at: r.created_at,
                    activates_at: r.activates_at,
                },
                signer: Signer::new(&material)?,
                jwk: material.public_jwk(),
            });
        }
        // By creation, not activation: a key scheduled earlier must not take
        // over from a newer one that was activated at once (an immediate
        // rotation after a compromise, or a new algorithm).
        keys.sort_by(|a, b| a.info.created_at.cmp(&b.info.created_at).then(a.info.kid.cmp(&b.info.kid)));
        Ok(Self { keys, verifier: Verifier::new(verification)?, verified: Default::default() })
    }

    /// The key that signs at `now`: the newest activated one (or, if none has
    /// activated yet, the oldest).
    fn current(&self, now: DateTime<Utc>) -> Option<&LoadedKey> {
        self.keys.iter().rev().find(|k| k.info.activates_at <= now).or_else(|| self.keys.first())
    }

    pub fn current_info(&self, now: DateTime<Utc>) -> Option<KeyInfo> {
        self.current(now).map(|k| k.info.clone())
    }

    pub fn sign(&self, claims: &AccessClaims, now: DateTime<Utc>) -> Result<String> {
        let key = self.current(now).ok_or_else(|| Error::internal("tenant has no signing key"))?;
        key.signer.sign(claims)
    }

    /// Signs an ID token (`typ: JWT`) with the current key.
    pub fn sign_id_token(&self, claims: &authd_core::claims::IdClaims, now: DateTime<Utc>) -> Result<String> {
        let key = self.current(now).ok_or_else(|| Error::internal("tenant has no signing key"))?;
        key.signer.sign_typed(claims, "JWT")
    }

    /// The algorithm ID tokens are signed with now.
    pub fn current_algorithm(&self, now: DateTime<Utc>) -> Option<authd_core::settings::SigningAlgorithm> {
        self.current(now).map(|k| k.info.algorithm)
    }

    /// Verifies an ID token this tenant issued (an `id_token_hint`), with
    /// the keys published at `now`.
    pub fn verify_id_token(
        &self,
        token: &str,
        issuer: &str,
        now: DateTime<Utc>,
    ) -> Result<authd_core::claims::IdClaims> {
        self.verifier.verify_id_token(token, issuer, |kid| {
            self.keys
                .iter()
                .position(|k| k.info.kid == kid)
                .is_some_and(|i| self.retired_at(i, now).is_none_or(|r| r + retirement_window() > now))
        })
    }

    /// Verifies with the keys published at `now` only: a retired key stops
    /// verifying the moment it leaves the JWKS, and a key removed by an
    /// immediate rotation is not in the set at all.
    ///
    /// A token these keys verified before skips the signature check (the
    /// costliest part of a token check): its exact text is remembered with
    /// its claims and key, and a repeat is accepted only while that key is
    /// still published, the claims still name `issuer` and `audience`, and
    /// the token has not expired, exactly what the full check would decide.
    /// The memory belongs to this key set: a new set of keys (rotation,
    /// deletion) starts with none.
    pub fn verify(&self, token: &str, issuer: &str, audience: &str, now: DateTime<Utc>) -> Result<AccessClaims> {
        let published = |kid: &str| {
            self.keys
                .iter()
                .position(|k| k.info.kid == kid)
                .is_some_and(|i| self.retired_at(i, now).is_none_or(|r| r + retirement_window() > now))
        };
        if let Some(seen) = self.verified.read().get(token)
            && seen.claims.iss == issuer
            && seen.claims.aud == audience
            && now.timestamp() < seen.claims.exp.saturating_add(EXP_LEEWAY_SECONDS)
            && published(&seen.kid)
        {
            return Ok(seen.claims.clone());
        }
        let claims = self.verifier.verify_published(token, issuer, audience, now.timestamp(), published)?;
        if let Some(kid) = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid) {
            let mut verified = self.verified.write();
            if verified.len() >= VERIFIED_TOKENS {
                let now = now.timestamp();
                verified.retain(|_, v| now < v.claims.exp.saturating_add(EXP_LEEWAY_SECONDS));
                if verified.len() >= VERIFIED_TOKENS / 2 {
                    verified.clear();
                }
            }
            verified.insert(token.into(), Verified { claims: claims.clone(), kid });
        }
        Ok(claims)
    }

    /// When each key stopped signing: the first activation, so far, of a key
    /// created after it.
    fn retired_at(&self, index: usize, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.keys[index + 1..].iter().map(|k| k.info.activates_at).filter(|t| *t <= now).min()
    }

    /// Keys to publish at `now`: next, current, and retired ones whose tokens
    /// may still be alive.
    pub fn published(&self, now: DateTime<Utc>) -> Vec<KeyInfo> {
        (0..self.keys.len())
            .filter(|i| self.retired_at(*i, now).is_none_or(|r| r + retirement_window() > now))
            .map(|i| self.keys[i].info.clone())
            .collect()
    }

    /// The JWKS document at `now`.
    pub fn jwks(&self, now: DateTime<Utc>) -> serde_json::Value {
        let published: Vec<String> = self.published(now).into_iter().map(|k| k.kid).collect();
        let jwks: Vec<serde_json::Value> =
            self.keys.iter().filter(|k| published.contains(&k.info.kid)).map(|k| k.jwk.clone()).collect();
        authd_core::keys::jwks(&jwks)
    }

    fn all_kids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.info.kid.clone()).collect()
    }

    /// Keys whose every token has expired: rotation deletes them.
    fn expired(&self, now: DateTime<Utc>) -> Vec<String> {
        (0..self.keys.len())
            .filter(|i| self.retired_at(*i, now).is_some_and(|r| r + retirement_window() <= now))
            .map(|i| self.keys[i].info.kid.clone())
            .collect()
    }
}

/// Generates a key (off the async workers: RSA generation takes a while) and
/// seals its private half for storage.
pub async fn new_key_record(
    keyring: &Arc<Keyring>,
    tenant: TenantId,
    alg: SigningAlgorithm,
    created_at: DateTime<Utc>,
    activates_at: DateTime<Utc>,
) -> Result<SigningKeyRecord> {
    let keyring = keyring.clone();
    tokio::task::spawn_blocking(move || {
        let material = SigningKeyMaterial::generate(alg)?;
        let kid = material.kid().to_owned();
        let sealed = keyring.seal(&material.to_pkcs8_der(), &SealContext { tenant, purpose: SEAL_PURPOSE, row: &kid });
        Ok(SigningKeyRecord {
            kid,
            algorithm: alg,
            private_key_sealed: sealed,
            public_jwk: material.public_jwk(),
            created_at,
            activates_at,
        })
    })
    .await
    .map_err(|e| Error::internal(format!("key generation task failed: {e}")))?
}

/// Adds a key of the tenant's configured algorithm, activating after one JWKS
/// cache lifetime (or now, when `immediate`), and deletes expired keys (every
/// other key, with `revoke_older`).
pub async fn rotate(
    deps: &Arc<Deps>,
    runtime: &Arc<TenantRuntime>,
    immediate: bool,
    revoke_older: bool,
    actor: Option<UserId>,
    meta: &RequestMeta,
) -> Result<KeyInfo> {
    let snapshot = runtime.snapshot();
    let alg = snapshot.record.settings.signing_algorithm;
    let now = Utc::now();
    let delay = if immediate { Duration::ZERO } else { deps.config.jwks_max_age };
    let activates_at = now + chrono::Duration::from_std(delay).map_err(Error::internal)?;
    let record = new_key_record(&deps.keyring, runtime.id, alg, now, activates_at).await?;
    // A compromised key leaves at once: every other key is deleted with the
    // new one's insertion, so it is out of the JWKS and of verification here
    // and, after the change notice below, on every replica.
    let expired = if revoke_older { snapshot.keys.all_kids() } else { snapshot.keys.expired(now) };
    let event = audit::event(
        kinds::KEY_ROTATED,
        meta,
        actor,
        None,
        Some(serde_json::json!({
            "kid": record.kid,
            "algorithm": alg.as_str(),
            "immediate": immediate,
            "revokedOlder": revoke_older,
            "activatesAt": activates_at.to_rfc3339(),
            "removed": expired,
        })),
    );
    deps.store.add_signing_key(runtime.id, &record, &expired, &event).await?;
    audit::log_event(runtime.id, &event);
    if let Err(e) = deps.tokens.publish_change(runtime.id).await {
        tracing::warn!(tenant = %runtime.id, error = %e, "could not announce a key rotation; replicas pick it up at their next reload");
    }
    Ok(KeyInfo { kid: record.kid, algorithm: alg, created_at: now, activates_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use authd_core::crypto::MasterKey;

    fn record(
        keyring: &Keyring,
        tenant: TenantId,
        alg: SigningAlgorithm,
        created: DateTime<Utc>,
        activates: DateTime<Utc>,
    ) -> SigningKeyRecord {
        let material = SigningKeyMaterial::generate(alg).unwrap();
        let kid = material.kid().to_owned();
        let sealed = keyring.seal(&material.to_pkcs8_der(), &SealContext { tenant, purpose: SEAL_PURPOSE, row: &kid });
        SigningKeyRecord {
            kid,
            algorithm: alg,
            private_key_sealed: sealed,
            public_jwk: material.public_jwk(),
            created_at: created,
            activates_at: activates,
        }
    }

    fn kids(infos: Vec<KeyInfo>) -> Vec<String> {
        infos.into_iter().map(|k| k.kid).collect()
    }

    #[test]
    fn a_scheduled_key_signs_after_one_cache_lifetime_and_is_published_before() {
        let keyring = Keyring::new(MasterKey::generate(), Vec::new());
        let tenant = TenantId::new();
        let t0 = Utc::now() - chrono::Duration::hours(2);
        let t1 = t0 + chrono::Duration::minutes(10);
        let k0 = record(&keyring, tenant, SigningAlgorithm::Es256, t0, t0);
        let k1 = record(&keyring, tenant, SigningAlgorithm::Es256, t1, t1 + chrono::Duration::minutes(5));
        let set = KeySet::build(&keyring, tenant, &[k1.clone(), k0.clone()], t0).unwrap();
        let at = |m: i64| t1 + chrono::Duration::minutes(m);
        assert_eq!(set.current_info(at(1)).unwrap().kid, k0.kid, "the next key does not sign yet");
        assert_eq!(kids(set.published(at(1))), vec![k0.kid.clone(), k1.kid.clone()], "but it is published");
        assert_eq!(set.current_info(at(6)).unwrap().kid, k1.kid);
        // The retired key stays published while its tokens may live, then goes.
        assert!(kids(set.published(at(60))).contains(&k0.kid));
        assert_eq!(kids(set.published(at(75))), vec![k1.kid.clone()]);
        assert_eq!(set.expired(at(75)), vec![k0.kid.clone()]);
    }

    #[test]
    fn a_newer_key_activated_at_once_supersedes_a_pending_one() {
        // A rotation scheduled K1 (ES256, five minutes ahead); then the
        // algorithm changed to EdDSA, which rotates at once to K2. K1 must
        // never take over from K2.
        let keyring = Keyring::new(MasterKey::generate(), Vec::new());
        let tenant = TenantId::new();
        let t0 = Utc::now() - chrono::Duration::hours(2);
        let t1 = t0 + chrono::Duration::minutes(10);
        let t2 = t1 + chrono::Duration::minutes(1);
        let k0 = record(&keyring, tenant, SigningAlgorithm::Es256, t0, t0);
        let k1 = record(&keyring, tenant, SigningAlgorithm::Es256, t1, t1 + chrono::Duration::minutes(5));
        let k2 = record(&keyring, tenant, SigningAlgorithm::EdDsa, t2, t2);
        let set = KeySet::build(&keyring, tenant, &[k0.clone(), k1.clone(), k2.clone()], t0).unwrap();
        let at = |m: i64| t2 + chrono::Duration::minutes(m);
        for minutes in [0, 4, 5, 30, 120] {
            let current = set.current_info(at(minutes)).unwrap();
            assert_eq!(
                (current.kid, current.algorithm),
                (k2.kid.clone(), SigningAlgorithm::EdDsa),
                "{minutes} min after"
            );
        }
        // K0 retired when K2 activated, not when K1 would have.
        assert!(kids(set.published(at(64))).contains(&k0.kid));
        assert!(!kids(set.published(at(66))).contains(&k0.kid));
        // Every token signed so far still verifies.
        let claims = AccessClaims {
            iss: "https://auth.example.com/t/acme".into(),
            sub: uuid::Uuid::new_v4(),
            aud: "acme".into(),
            tid: tenant.0,
            sid: uuid::Uuid::new_v4(),
            jti: uuid::Uuid::new_v4(),
            iat: at(0).timestamp(),
            exp: at(0).timestamp() + 600,
            amr: vec!["pwd".into()],
            role: "user".into(),
            mfa_enrollment_required: false,
            client_id: None,
            scope: None,
            sso_sid: None,
        };
        let token = set.sign(&claims, at(0)).unwrap();
        set.verify(&token, "https://auth.example.com/t/acme", "acme", at(1)).unwrap();
    }

    #[test]
    fn a_retired_key_verifies_exactly_as_long_as_it_is_published() {
        let keyring = Keyring::new(MasterKey::generate(), Vec::new());
        let tenant = TenantId::new();
        let t0 = Utc::now() - chrono::Duration::hours(3);
        let t1 = t0 + chrono::Duration::minutes(10);
        let k0 = record(&keyring, tenant, SigningAlgorithm::Es256, t0, t0);
        let k1 = record(&keyring, tenant, SigningAlgorithm::Es256, t1, t1);
        let old = KeySet::build(&keyring, tenant, std::slice::from_ref(&k0), t0).unwrap();
        let set = KeySet::build(&keyring, tenant, &[k0.clone(), k1.clone()], t0).unwrap();
        let at = |m: i64| t1 + chrono::Duration::minutes(m);
        let claims = AccessClaims {
            iss: "https://auth.example.com/t/acme".into(),
            sub: uuid::Uuid::new_v4(),
            aud: "acme".into(),
            tid: tenant.0,
            sid: uuid::Uuid::new_v4(),
            jti: uuid::Uuid::new_v4(),
            iat: at(0).timestamp(),
            // Longer than the retirement window, so only publication decides.
            exp: at(0).timestamp() + 3 * 3600,
            amr: vec!["pwd".into()],
            role: "user".into(),
            mfa_enrollment_required: false,
            client_id: None,
            scope: None,
            sso_sid: None,
        };
        let token = old.sign(&claims, at(0)).unwrap();
        let verify = |m: i64| set.verify(&token, "https://auth.example.com/t/acme", "acme", at(m));
        assert!(kids(set.published(at(64))).contains(&k0.kid));
        assert!(verify(64).is_ok(), "published: verifies");
        assert!(!kids(set.published(at(66))).contains(&k0.kid));
        assert!(verify(66).is_err(), "no longer published: refused");
    }

    #[test]
    fn a_remembered_token_is_refused_whenever_the_full_check_would_refuse_it() {
        let keyring = Keyring::new(MasterKey::generate(), Vec::new());
        let tenant = TenantId::new();
        let t0 = Utc::now() - chrono::Duration::hours(1);
        let k0 = record(&keyring, tenant, SigningAlgorithm::Es256, t0, t0);
        let set = KeySet::build(&keyring, tenant, std::slice::from_ref(&k0), t0).unwrap();
        let iss = "https://auth.example.com/t/acme";
        let now = Utc::now();
        let claims = AccessClaims {
            iss: iss.into(),
            sub: uuid::Uuid::new_v4(),
            aud: "acme".into(),
            tid: tenant.0,
            sid: uuid::Uuid::new_v4(),
            jti: uuid::Uuid::new_v4(),
            iat: now.timestamp(),
            exp: now.timestamp() + 60,
            amr: vec!["pwd".into()],
            role: "user".into(),
            mfa_enrollment_required: false,
            client_id: None,
            scope: None,
            sso_sid: None,
        };
        let token = set.sign(&claims, now).unwrap();
        let first = set.verify(&token, iss, "acme", now).unwrap();
        assert_eq!(set.verified.read().len(), 1, "remembered");
        let again = set.verify(&token, iss, "acme", now).unwrap();
        assert_eq!((again.jti, again.sid, again.exp), (first.jti, first.sid, first.exp));
        // Another audience or issuer (a settings change) is refused, as is
        // the token once expired, although it was remembered.
        assert!(set.verify(&token, iss, "other", now).is_err());
        assert!(set.verify(&token, "https://auth.example.com/t/other", "acme", now).is_err());
        let later = now + chrono::Duration::seconds(60 + EXP_LEEWAY_SECONDS);
        assert!(set.verify(&token, iss, "acme", later).is_err());
        // A different text (one signature byte changed) is never a hit.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(set.verify(&forged, iss, "acme", now).is_err());
        // A key set without the key (an immediate rotation deleted it)
        // remembers nothing of the old set and refuses the token.
        let k1 = record(&keyring, tenant, SigningAlgorithm::Es256, now, now);
        let rotated = KeySet::build(&keyring, tenant, std::slice::from_ref(&k1), now).unwrap();
        assert!(rotated.verify(&token, iss, "acme", now).is_err());
    }
}
