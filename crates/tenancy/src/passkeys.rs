//! Passkeys (WebAuthn) of one tenant: registration for a signed-in user,
//! sign-in with an email (the user's credentials offered) or without one
//! (discoverable credentials, the user found by the user handle), and the
//! user's list.
//!
//! The ceremonies are webauthn-rs's (`webauthn-rs-core`, the engine under
//! `webauthn-rs`): authd asks for user verification as *preferred*, so an
//! authenticator without it still signs in, as one factor (`amr ["hwk"]`,
//! then TOTP when the user has it), and a verified one is two
//! (`["hwk","user"]`). The high-level `Webauthn` type of `webauthn-rs`
//! always requires verification, hence the core API here. Ceremony state
//! lives in the token store for 5 minutes under a random challenge id,
//! single use and scoped to the tenant, so any replica finishes what another
//! began. Every failure answers `UNAUTHENTICATED`; the reason goes to the
//! audit log (`passkey.login_failed`) and the debug log.

use std::time::Duration;

use authd_core::{Error, Result, UserId, crypto};
use authd_store::{PasskeyRecord, UserRecord};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use url::Url;
use webauthn_rs_core::WebauthnCore;
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::proto::{
    AttestationConveyancePreference, AuthenticationState, Credential, PublicKeyCredential, RegisterPublicKeyCredential,
    RegistrationState, RequestRegistrationExtensions, UserVerificationPolicy,
};

use crate::accounts::LoginOutcome;
use crate::audit::{self, RequestMeta, kinds};
use crate::ctx::TenantCtx;
use crate::sessions::Principal;

const REGISTER_KIND: &str = "passkey_register";
const LOGIN_KIND: &str = "passkey_login";
/// How long a ceremony may take.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// Keyed-hash purpose of the decoy credential ids offered for unknown emails.
const DECOY_PURPOSE: &str = "passkey-decoy";

/// A ceremony's options for the browser.
pub struct Options {
    pub challenge_id: String,
    /// The `publicKey` member (WebAuthn Level 3 JSON form).
    pub options: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct Registering {
    user: UserId,
    state: RegistrationState,
}

#[derive(Serialize, Deserialize)]
struct SigningIn {
    /// The user the email named (`None`: unknown email, or discoverable).
    user: Option<UserId>,
    /// An email was given (so the credential must be one of its user's).
    by_email: bool,
    state: AuthenticationState,
}

/// The relying party of a tenant: its id and the origins it accepts. The RP
/// ID defaults to the public URL's host; the origins to the tenant's
/// `allowedOrigins` within the RP ID, and the public URL's origin. Explicit
/// settings are checked: the RP ID must be a registrable suffix of every
/// origin's host.
pub fn relying_party(
    rp_id: Option<&str>,
    origins: &[String],
    allowed_origins: &[String],
    public_url: &str,
) -> Result<(String, Vec<Url>)> {
    let public = Url::parse(public_url).map_err(Error::internal)?;
    let rp = match rp_id.map(str::trim).filter(|s| !s.is_empty()) {
        Some(r) => {
            let valid = r.len() <= 253
                && !r.starts_with('.')
                && !r.ends_with('.')
                && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !valid {
                return Err(Error::bad_input("webauthnRpId", "a lowercase domain name, without scheme or port"));
            }
            r.to_owned()
        }
        None => public.host_str().unwrap_or_default().to_owned(),
    };
    let within = |u: &Url| u.host_str().is_some_and(|h| h == rp || h.ends_with(&format!(".{rp}")));
    let mut out = Vec::new();
    if origins.is_empty() {
        let candidates = allowed_origins.iter().filter_map(|o| Url::parse(o).ok()).chain([public.clone()]);
        for u in candidates {
            let origin = Url::parse(&u.origin().ascii_serialization()).map_err(Error::internal)?;
            if within(&origin) && !out.contains(&origin) {
                out.push(origin);
            }
        }
    } else {
        for o in origins {
            let u = Url::parse(o).map_err(|_| Error::bad_input("webauthnOrigins", format!("not an origin: {o}")))?;
            if u.origin().ascii_serialization() != *o {
                return Err(Error::bad_input("webauthnOrigins", format!("an origin is scheme://host[:port]: {o}")));
            }
            if !within(&u) {
                return Err(Error::bad_input(
                    "webauthnOrigins",
                    format!("{o} is not within the relying party {rp} (the RP ID must be a suffix of the host)"),
                ));
            }
            out.push(u);
        }
    }
    if out.is_empty() {
        return Err(Error::bad_input("webauthnRpId", "no accepted origin lies within this relying party"));
    }
    Ok((rp, out))
}

/// The tenant's passkey operations, reached through [`TenantCtx::passkeys`].
pub struct PasskeyService<'c> {
    pub(crate) ctx: &'c TenantCtx<'c>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn refused<T>(reason: &str) -> Result<T> {
    tracing::debug!(reason, "passkey ceremony refused");
    Err(Error::Unauthenticated)
}

fn valid_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::bad_input("name", "1 to 64 printable characters"));
    }
    Ok(name.to_owned())
}

impl PasskeyService<'_> {
    fn core(&self) -> Result<WebauthnCore> {
        let snap = self.ctx.rt.snapshot();
        let s = &snap.record.settings;
        let (rp_id, origins) = relying_party(
            s.webauthn_rp_id.as_deref(),
            &s.webauthn_origins,
            &s.allowed_origins,
            &self.ctx.deps.config.public_url,
        )?;
        Ok(WebauthnCore::new_unsafe_experts_only(
            &snap.record.name,
            &rp_id,
            origins,
            CHALLENGE_TTL,
            Some(false),
            Some(false),
        ))
    }

    /// The caller's passkeys.
    pub async fn list(&self, p: &Principal) -> Result<Vec<PasskeyRecord>> {
        Ok(self.ctx.deps.store.passkeys(self.ctx.rt.id, p.user).await?)
    }

    /// `beginPasskeyRegistration`: options excluding the user's existing
    /// passkeys, a discoverable credential preferred (for usernameless
    /// sign-in), user verification preferred.
    pub async fn begin_registration(&self, p: &Principal) -> Result<Options> {
        let user = self.ctx.accounts().me(p).await?;
        let existing = self.list(p).await?;
        let exclude = existing.iter().filter_map(|k| URL_SAFE_NO_PAD.decode(&k.credential_id).ok()).collect::<Vec<_>>();
        let label = user.email.clone().unwrap_or_else(|| user.id.to_string());
        let core = self.core()?;
        let builder = core
            .new_challenge_register_builder(user.id.0.as_bytes(), &label, &label)
            .map_err(Error::internal)?
            .attestation(AttestationConveyancePreference::None)
            .user_verification_policy(UserVerificationPolicy::Preferred)
            .require_resident_key(false)
            .exclude_credentials(Some(exclude))
            .extensions(Some(RequestRegistrationExtensions { cred_props: Some(true), ..Default::default() }));
        let (ccr, state) = core.generate_challenge_register(builder).map_err(Error::internal)?;
        let mut options = serde_json::to_value(&ccr.public_key).map_err(Error::internal)?;
        // A discoverable credential is preferred, not required: an
        // authenticator that cannot keep one still registers (and signs in
        // by email).
        if let Some(sel) = options.get_mut("authenticatorSelection").and_then(|v| v.as_object_mut()) {
            sel.insert("residentKey".into(), "preferred".into());
            sel.insert("requireResidentKey".into(), false.into());
        }
        let challenge_id = crypto::random_token(24);
        let value = serde_json::to_string(&Registering { user: user.id, state }).map_err(Error::internal)?;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, REGISTER_KIND, &challenge_id, &value, CHALLENGE_TTL).await?;
        Ok(Options { challenge_id, options })
    }

    /// `finishPasskeyRegistration`: the browser's credential against the
    /// stored ceremony (its challenge, origin, RP ID and signature).
    pub async fn finish_registration(
        &self,
        p: &Principal,
        challenge_id: &str,
        credential: serde_json::Value,
        name: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<PasskeyRecord> {
        let name = valid_name(name.unwrap_or("Passkey"))?;
        let user = self.ctx.accounts().me(p).await?;
        if challenge_id.is_empty() || challenge_id.len() > 64 {
            return refused("malformed challenge id");
        }
        let Some(stored) = self.ctx.deps.tokens.take_once(self.ctx.rt.id, REGISTER_KIND, challenge_id).await? else {
            return refused("unknown, used or expired registration challenge");
        };
        let stored: Registering = serde_json::from_str(&stored).map_err(Error::internal)?;
        if stored.user != user.id {
            return refused("registration challenge of another user");
        }
        let Ok(reg) = serde_json::from_value::<RegisterPublicKeyCredential>(credential) else {
            return refused("credential is not a RegistrationResponseJSON");
        };
        let cred = match self.core()?.register_credential(&reg, &stored.state, None) {
            Ok(c) => c,
            Err(e) => return refused(&format!("registration refused: {e}")),
        };
        let record = PasskeyRecord {
            id: uuid::Uuid::now_v7(),
            user_id: user.id,
            credential_id: b64(&cred.cred_id),
            name,
            credential: serde_json::to_string(&cred).map_err(Error::internal)?,
            sign_count: i64::from(cred.counter),
            backup_eligible: cred.backup_eligible,
            backup_state: cred.backup_state,
            created_at: Utc::now(),
            last_used_at: None,
        };
        let event = audit::event(
            kinds::PASSKEY_REGISTERED,
            meta,
            Some(user.id),
            Some(user.id),
            Some(serde_json::json!({ "passkeyId": record.id.to_string(), "userVerified": cred.user_verified })),
        );
        match self.ctx.deps.store.insert_passkey(self.ctx.rt.id, &record, &event).await {
            Ok(()) => {}
            Err(authd_store::Error::Duplicate(_)) => return refused("credential already registered"),
            Err(e) => return Err(e.into()),
        }
        audit::log_event(self.ctx.rt.id, &event);
        Ok(record)
    }

    /// `beginPasskeyLogin`: with an email, its user's passkeys are offered
    /// (an unknown email, or one without passkeys, gets decoy credentials of
    /// the same shape, stable per address); without, none (discoverable).
    pub async fn begin_login(&self, email: Option<&str>, meta: &RequestMeta) -> Result<Options> {
        self.ctx.limits().before_passkey_begin(meta).await?;
        let core = self.core()?;
        let (user, creds, decoy) = match email {
            Some(e) => {
                let e = authd_core::email::Email::parse(e)?;
                let user = self.ctx.deps.store.user_by_email(self.ctx.rt.id, e.as_str()).await?.filter(|u| !u.disabled);
                let creds = match &user {
                    Some(u) => self.credentials(u).await?,
                    None => Vec::new(),
                };
                let decoy =
                    creds.is_empty().then(|| self.ctx.deps.keyring.keyed_hash(DECOY_PURPOSE, e.as_str().as_bytes()));
                (user.map(|u| u.id), creds, decoy)
            }
            None => (None, Vec::new(), None),
        };
        let builder = core
            .new_challenge_authenticate_builder(creds, Some(UserVerificationPolicy::Preferred))
            .map_err(Error::internal)?;
        let (rcr, state) = core.generate_challenge_authenticate(builder).map_err(Error::internal)?;
        let mut options = serde_json::to_value(&rcr.public_key).map_err(Error::internal)?;
        if let Some(seed) = decoy {
            // What a one-passkey account's options look like.
            let id = b64(&<sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes()));
            options["allowCredentials"] = serde_json::json!([{ "type": "public-key", "id": id }]);
        }
        let challenge_id = crypto::random_token(24);
        let value =
            serde_json::to_string(&SigningIn { user, by_email: email.is_some(), state }).map_err(Error::internal)?;
        self.ctx.deps.tokens.put_once(self.ctx.rt.id, LOGIN_KIND, &challenge_id, &value, CHALLENGE_TTL).await?;
        Ok(Options { challenge_id, options })
    }

    async fn credentials(&self, user: &UserRecord) -> Result<Vec<Credential>> {
        let keys = self.ctx.deps.store.passkeys(self.ctx.rt.id, user.id).await?;
        Ok(keys.iter().filter_map(|k| serde_json::from_str::<Credential>(&k.credential).ok()).collect())
    }

    fn failed(&self, meta: &RequestMeta, user: Option<UserId>, reason: &str) {
        self.ctx.deps.audit.record(
            self.ctx.rt.id,
            audit::event(kinds::PASSKEY_LOGIN_FAILED, meta, None, user, Some(serde_json::json!({ "reason": reason }))),
        );
    }

    /// `finishPasskeyLogin`: limited like `login`; tokens, or an MFA
    /// challenge when the authenticator did not verify the user and the
    /// user has TOTP.
    pub async fn finish_login(
        &self,
        challenge_id: &str,
        credential: serde_json::Value,
        meta: &RequestMeta,
    ) -> Result<LoginOutcome> {
        if challenge_id.is_empty() || challenge_id.len() > 64 {
            return refused("malformed challenge id");
        }
        let Ok(pkc) = serde_json::from_value::<PublicKeyCredential>(credential) else {
            self.failed(meta, None, "malformed");
            return refused("credential is not an AuthenticationResponseJSON");
        };
        let Some(stored) = self.ctx.deps.tokens.take_once(self.ctx.rt.id, LOGIN_KIND, challenge_id).await? else {
            self.failed(meta, None, "unknown_challenge");
            return refused("unknown, used, expired or foreign challenge");
        };
        let stored: SigningIn = serde_json::from_str(&stored).map_err(Error::internal)?;
        let record = self.ctx.deps.store.passkey_by_credential(self.ctx.rt.id, &b64(&pkc.raw_id)).await?;
        let Some(mut record) = record else {
            self.failed(meta, None, "unknown_credential");
            return refused("no such passkey in this tenant");
        };
        let user = self.ctx.deps.store.user_by_id(self.ctx.rt.id, record.user_id).await?;
        let Some(user) = user else { return refused("user gone") };
        // The same limits as a password login, on the same account keys.
        let account = crate::limits::account_key(self.ctx, user.email.as_deref().unwrap_or(&user.id.to_string()));
        self.ctx.limits().before_login(&account, meta).await?;
        let matches_flow = if stored.by_email {
            stored.user == Some(user.id)
        } else {
            pkc.get_user_unique_id() == Some(user.id.0.as_bytes().as_slice())
        };
        if !matches_flow {
            self.failed(meta, Some(user.id), "user_mismatch");
            return refused("the credential is not of the user the ceremony was for");
        }
        if user.disabled {
            self.failed(meta, Some(user.id), "disabled");
            return refused("user disabled");
        }
        let mut cred: Credential = serde_json::from_str(&record.credential).map_err(Error::internal)?;
        let mut state = stored.state;
        state.set_allowed_credentials(vec![cred.clone()]);
        let result = match self.core()?.authenticate_credential(&pkc, &state) {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                self.failed(meta, Some(user.id), "counter_not_increasing");
                return refused("signature counter did not increase: a cloned authenticator?");
            }
            Err(e) => {
                self.failed(meta, Some(user.id), "verification");
                return refused(&format!("assertion refused: {e}"));
            }
        };
        let previous = record.sign_count;
        cred.counter = result.counter();
        cred.backup_state = result.backup_state();
        record.credential = serde_json::to_string(&cred).map_err(Error::internal)?;
        record.sign_count = i64::from(result.counter());
        record.backup_state = result.backup_state();
        record.last_used_at = Some(Utc::now());
        if !self.ctx.deps.store.record_passkey_use(self.ctx.rt.id, &record, previous).await? {
            self.failed(meta, Some(user.id), "concurrent_use");
            return refused("the passkey was used concurrently");
        }
        self.ctx.limits().login_succeeded(&account, meta).await;
        let verified = result.user_verified();
        let amr: Vec<String> = if verified { vec!["hwk".into(), "user".into()] } else { vec!["hwk".into()] };
        let outcome = if verified {
            // A verified passkey is two factors already.
            LoginOutcome::Tokens(Box::new(self.ctx.sessions().start(user, amr.clone(), meta).await?))
        } else {
            self.ctx.mfa().second_factor_or_tokens(user, amr.clone(), meta).await?
        };
        let uid = record.user_id;
        self.ctx.deps.audit.record(
            self.ctx.rt.id,
            audit::event(
                kinds::PASSKEY_LOGIN_SUCCEEDED,
                meta,
                Some(uid),
                Some(uid),
                Some(serde_json::json!({ "amr": amr, "passkeyId": record.id.to_string(), "mfaChallenge": matches!(outcome, LoginOutcome::MfaChallenge { .. }) })),
            ),
        );
        Ok(outcome)
    }

    pub async fn rename(&self, p: &Principal, id: &str, name: &str) -> Result<PasskeyRecord> {
        let id = uuid::Uuid::parse_str(id).map_err(|_| Error::bad_input("id", "not a passkey id"))?;
        let name = valid_name(name)?;
        self.ctx
            .deps
            .store
            .rename_passkey(self.ctx.rt.id, p.user, id, &name)
            .await?
            .ok_or_else(|| Error::bad_input("id", "no such passkey"))
    }

    pub async fn delete(&self, p: &Principal, id: &str, meta: &RequestMeta) -> Result<bool> {
        let Ok(id) = uuid::Uuid::parse_str(id) else { return Ok(false) };
        let event = audit::event(
            kinds::PASSKEY_DELETED,
            meta,
            Some(p.user),
            Some(p.user),
            Some(serde_json::json!({ "passkeyId": id.to_string() })),
        );
        let deleted = self.ctx.deps.store.delete_passkey(self.ctx.rt.id, p.user, id, &event).await?;
        if deleted {
            audit::log_event(self.ctx.rt.id, &event);
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relying_party_defaults_to_the_public_host_and_checks_explicit_origins() {
        let (rp, origins) =
            relying_party(None, &[], &["https://app.example.com".into()], "https://example.com").unwrap();
        assert_eq!(rp, "example.com");
        assert_eq!(origins.len(), 2);
        // An allowed origin outside the RP is left out of the default, not an error.
        let (_, origins) =
            relying_party(None, &[], &["https://other.test".into()], "https://auth.example.com").unwrap();
        assert_eq!(origins.len(), 1);
        assert!(relying_party(Some("example.com"), &["https://evil.test".into()], &[], "https://example.com").is_err());
        assert!(relying_party(Some("https://example.com"), &[], &[], "https://example.com").is_err());
        let (rp, _) =
            relying_party(Some("example.com"), &["https://login.example.com".into()], &[], "https://x.example.com")
                .unwrap();
        assert_eq!(rp, "example.com");
    }
}
