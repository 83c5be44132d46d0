//! The refresh-token format: a token names its session and its place in the
//! session's chain of rotations, and carries a MAC under the master key.
//!
//! ```text
//! <sid, 32 hex>.<generation>.<256 random bits, base64url>.<HMAC-SHA-256, 64 hex>
//! ```
//!
//! The MAC covers the tenant, the token kind (its keyed-hash purpose: a
//! client's OAuth refresh token never works at `refresh`) and everything
//! before it. A token whose MAC checks was issued by authd as generation `g`
//! of session `sid`, so the token store needs to remember only a session's
//! current generation: an earlier one presented again is a copy someone
//! kept, and the session goes. A rotation rewrites one session record
//! instead of storing a hash of every token ever issued, and nothing in the
//! store can be replayed as a token.
//!
//! Tokens issued before this format (43 random base64url characters, stored
//! as a keyed hash) keep working until they expire: they are looked up by
//! their hash under every configured master key, and rotating one issues a
//! token of this format.

use authd_core::crypto::{self, Keyring};
use authd_core::{SessionId, TenantId};
use authd_tokens::RefreshKey;
use uuid::Uuid;

/// Refresh tokens of one kind (`purpose`) for one tenant.
pub(crate) struct RefreshTokens<'a> {
    pub(crate) keyring: &'a Keyring,
    pub(crate) purpose: &'static str,
    pub(crate) tenant: TenantId,
}

/// A presented refresh token, as the token store can find it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// A token of this format whose MAC checks.
    Named(RefreshKey<'static>),
    /// A token from before this format: its keyed hash under each master key
    /// (current first).
    Hashed(Vec<String>),
    /// Neither: malformed, forged, or of another tenant or kind.
    Invalid,
}

impl Presented {
    /// The keys to look the token up by, in order.
    pub(crate) fn keys(&self) -> Vec<RefreshKey<'_>> {
        match self {
            Presented::Named(key) => vec![*key],
            Presented::Hashed(hashes) => hashes.iter().map(|h| RefreshKey::Hashed(h)).collect(),
            Presented::Invalid => Vec::new(),
        }
    }
}

impl RefreshTokens<'_> {
    /// The token for generation `generation` of session `sid`.
    pub(crate) fn issue(&self, sid: SessionId, generation: u64) -> String {
        let body = format!("{}.{generation}.{}", sid.0.simple(), crypto::random_token(32));
        let mac = self.keyring.keyed_hash(self.purpose, self.signed(&body).as_bytes());
        format!("{body}.{mac}")
    }

    /// Reads a presented token. Checks the MAC under every configured master
    /// key (a master-key rotation keeps tokens issued before it working).
    pub(crate) fn read(&self, token: &str) -> Presented {
        let Some((body, mac)) = token.rsplit_once('.') else {
            return Presented::Hashed(self.keyring.keyed_hash_candidates(self.purpose, token.as_bytes()));
        };
        let mut parts = body.split('.');
        let (Some(sid), Some(generation), Some(random), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Presented::Invalid;
        };
        let signed = self.signed(body);
        if !self.keyring.keyed_hash_candidates(self.purpose, signed.as_bytes()).iter().any(|c| crypto::ct_eq(c, mac)) {
            return Presented::Invalid;
        }
        // Issued by `issue`, so well formed; checked anyway.
        match (Uuid::try_parse(sid), generation.parse::<u64>()) {
            (Ok(sid), Ok(generation)) if !random.is_empty() => {
                Presented::Named(RefreshKey::Named { sid: SessionId(sid), generation })
            }
            _ => Presented::Invalid,
        }
    }

    /// What the MAC covers.
    fn signed(&self, body: &str) -> String {
        format!("{}.{body}", self.tenant)
    }
}

#[cfg(test)]
mod tests {
    use authd_core::crypto::MasterKey;

    use super::*;

    fn tokens(keyring: &Keyring, tenant: TenantId) -> RefreshTokens<'_> {
        RefreshTokens { keyring, purpose: "refresh-token", tenant }
    }

    #[test]
    fn an_issued_token_reads_back_as_its_session_and_generation() {
        let ring = Keyring::from(MasterKey::generate());
        let (t, sid) = (TenantId::new(), SessionId::new());
        let token = tokens(&ring, t).issue(sid, 7);
        assert!(token.len() <= 256, "{}", token.len());
        assert_eq!(tokens(&ring, t).read(&token), Presented::Named(RefreshKey::Named { sid, generation: 7 }));
        // 256 fresh random bits in each token.
        assert_ne!(token, tokens(&ring, t).issue(sid, 7));
    }

    #[test]
    fn a_token_is_refused_by_another_tenant_kind_or_master_key_and_when_altered() {
        let ring = Keyring::from(MasterKey::generate());
        let (t, sid) = (TenantId::new(), SessionId::new());
        let token = tokens(&ring, t).issue(sid, 3);
        assert_eq!(tokens(&ring, TenantId::new()).read(&token), Presented::Invalid);
        let oauth = RefreshTokens { keyring: &ring, purpose: "oidc-refresh-token", tenant: t };
        assert_eq!(oauth.read(&token), Presented::Invalid);
        assert_eq!(tokens(&Keyring::from(MasterKey::generate()), t).read(&token), Presented::Invalid);
        // A later generation of the same session, forged from this token.
        let forged = token.replacen(".3.", ".4.", 1);
        assert_eq!(tokens(&ring, t).read(&forged), Presented::Invalid);
        assert_eq!(tokens(&ring, t).read("a.b.c.d.e"), Presented::Invalid);
        assert_eq!(tokens(&ring, t).read("a.b"), Presented::Invalid);
    }

    #[test]
    fn tokens_outlive_a_master_key_rotation() {
        let old = MasterKey::generate();
        let (t, sid) = (TenantId::new(), SessionId::new());
        let before = Keyring::from(old.clone());
        let token = tokens(&before, t).issue(sid, 1);
        let after = Keyring::new(MasterKey::generate(), vec![old]);
        assert_eq!(tokens(&after, t).read(&token), Presented::Named(RefreshKey::Named { sid, generation: 1 }));
    }

    #[test]
    fn a_token_of_the_earlier_format_is_looked_up_by_its_hashes() {
        let old = MasterKey::generate();
        let ring = Keyring::new(MasterKey::generate(), vec![old]);
        let t = TenantId::new();
        let legacy = crypto::random_token(32);
        let Presented::Hashed(hashes) = tokens(&ring, t).read(&legacy) else { panic!("not hashed") };
        assert_eq!(hashes, ring.keyed_hash_candidates("refresh-token", legacy.as_bytes()));
        assert_eq!(hashes.len(), 2);
    }
}
