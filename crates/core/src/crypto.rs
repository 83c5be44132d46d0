//! The master key and what it protects: AEAD sealing of secrets at rest,
//! keyed hashes of bearer secrets, and random tokens (docs/architecture.md, "Secrets at
//! rest are sealed").
//!
//! - [`MasterKey`]: 32 bytes from the environment, zeroized on drop, never
//!   printed; it has a short public [`MasterKey::id`] so sealed values can say
//!   which key sealed them.
//! - [`Keyring`]: the current master key plus earlier ones kept for rotation.
//!   It seals with the current key, opens with whichever key the sealed value
//!   names, and computes keyed hashes.
//! - [`SealContext`]: the associated data that binds a sealed value to its
//!   tenant, purpose and row, so a value copied elsewhere fails to open.
//! - [`random_token`], [`random_bytes`], [`ct_eq`]: small helpers.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::ids::TenantId;

type HmacSha256 = Hmac<Sha256>;

/// Length of a master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;

/// Version tag of the sealed format; a new format gets a new tag so old
/// values stay readable.
const SEAL_VERSION: &str = "v1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

// Domain-separation labels: each use of the master key gets its own derived
// key, so a value computed for one purpose can never be replayed as another
// (e.g. a keyed hash can never equal a sealing key).
const KEY_ID_LABEL: &[u8] = b"authd/master-key-id/v1";
const SEAL_KEY_LABEL: &[u8] = b"authd/seal/v1";
const KEYED_HASH_LABEL: &str = "authd/keyed-hash/v1/";

/// The master key (`AUTHD_MASTER_KEY`): 32 random bytes that seal signing
/// keys, TOTP secrets and OAuth client secrets, and key the hashes of refresh
/// tokens, recovery codes and login codes.
///
/// Zeroized on drop; `Debug` shows only its [`id`](Self::id).
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; MASTER_KEY_LEN]>,
    id: String,
}

impl MasterKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        let bytes = Zeroizing::new(bytes);
        // The id is a truncated hash, with its own label, so publishing it in
        // every sealed value reveals nothing usable about the key (32 bits of
        // a hash of a 256-bit secret).
        let digest =
            Sha256::new().chain_update(KEY_ID_LABEL).chain_update([0u8]).chain_update(bytes.as_slice()).finalize();
        let id = hex::encode(&digest[..4]);
        Self { bytes, id }
    }

    /// Parses the base64 form (standard or URL-safe alphabet, padded or not,
    /// surrounding whitespace ignored, as a `*_FILE` often ends in a newline).
    /// It must decode to exactly 32 bytes.
    pub fn from_base64(encoded: &str) -> Result<Self> {
        let encoded = encoded.trim();
        let decoded = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .into_iter()
            .find_map(|engine| engine.decode(encoded).ok().map(Zeroizing::new))
            .ok_or_else(|| {
                Error::bad_input(
                    "master_key",
                    "the master key is not valid base64; it must be the base64 of exactly 32 random bytes",
                )
            })?;
        let bytes: [u8; MASTER_KEY_LEN] = decoded.as_slice().try_into().map_err(|_| {
            Error::bad_input(
                "master_key",
                format!("the master key must decode to exactly 32 bytes, but it decodes to {} bytes", decoded.len()),
            )
        })?;
        // A typed or patterned "key" (all zeros, "aaaa...", a repeated
        // phrase) is refused. 32 random bytes have about 30 distinct values;
        // fewer than 12 happens by chance with probability far below 2^-100.
        let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
        if distinct < 12 {
            return Err(Error::bad_input(
                "master_key",
                "the master key does not look random; generate one with `openssl rand -base64 32`",
            ));
        }
        Ok(Self::from_bytes(bytes))
    }

    /// A fresh key from the OS random number generator.
    pub fn generate() -> Self {
        Self::from_bytes(random_bytes())
    }

    /// The standard, padded base64 form, the one `AUTHD_MASTER_KEY` takes.
    /// The result is the secret itself: write it only where the key belongs.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.bytes.as_slice())
    }

    /// A short, stable, public id (8 hex characters) naming this key in
    /// sealed values and logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A subkey for one use of the master key: HMAC(master, label), the
    /// expand step of HKDF with a single block.
    fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut mac = hmac_sha256(&self.bytes);
        mac.update(label);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    fn seal(&self, plaintext: &[u8], ctx: &SealContext<'_>) -> String {
        let key = self.derive(SEAL_KEY_LABEL);
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        // XChaCha20's 192-bit nonce makes random nonces safe however many
        // values are sealed under one key (no birthday-bound reuse).
        let nonce: [u8; NONCE_LEN] = random_bytes();
        let aad = ctx.associated_data(&self.id);
        // Encryption only fails for plaintexts beyond 256 GiB; were it ever to,
        // the empty ciphertext makes a value that fails to open (fails closed).
        let ciphertext =
            cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad }).unwrap_or_default();
        let mut body = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&ciphertext);
        format!("{SEAL_VERSION}.{}.{}", self.id, URL_SAFE_NO_PAD.encode(body))
    }

    fn open(&self, body: &[u8], ctx: &SealContext<'_>) -> Result<Zeroizing<Vec<u8>>> {
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::internal("sealed value is truncated"));
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let key = self.derive(SEAL_KEY_LABEL);
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        let aad = ctx.associated_data(&self.id);
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad })
            .map(Zeroizing::new)
            // The same message whether the value was tampered with or moved to
            // another tenant, purpose or row: the log gets no oracle.
            .map_err(|_| {
                Error::internal(format!(
                    "sealed value failed authentication (purpose {:?}): tampered, or not sealed for this tenant, purpose and row",
                    ctx.purpose
                ))
            })
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// What a sealed value belongs to. It is the AEAD's associated data, so a
/// value opens only under the same tenant, purpose and row it was sealed for:
/// a database writer cannot swap one tenant's (or user's) sealed secret into
/// another's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealContext<'a> {
    /// Whose secret it is.
    pub tenant: TenantId,
    /// What kind of secret, e.g. `"signing-key"`, `"totp-secret"`,
    /// `"oauth-client-secret"`.
    pub purpose: &'a str,
    /// Which row holds it, e.g. the key id, the user id or the provider name.
    pub row: &'a str,
}

impl SealContext<'_> {
    /// An unambiguous encoding: every variable-length part is length-prefixed,
    /// so ("a.b", "c") and ("a", "b.c") never produce the same bytes.
    fn associated_data(&self, key_id: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.purpose.len() + self.row.len());
        for part in [
            SEAL_KEY_LABEL,
            self.tenant.as_uuid().as_bytes().as_slice(),
            self.purpose.as_bytes(),
            self.row.as_bytes(),
            key_id.as_bytes(),
        ] {
            aad.extend_from_slice(&(part.len() as u64).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad
    }
}

/// The current master key and the earlier ones still needed to open values
/// sealed before a rotation (`authd reseal` moves them to the current key).
#[derive(Clone, Debug)]
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl From<MasterKey> for Keyring {
    fn from(current: MasterKey) -> Self {
        Self::new(current, Vec::new())
    }
}

impl Keyring {
    /// A keyring that seals with `current` and can also open values sealed
    /// with any of `previous`.
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> Self {
        Self { current, previous }
    }

    /// The key new values are sealed with.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    /// Encrypts and authenticates `plaintext` under the current key, bound to
    /// `ctx`. The result is `v1.<key id>.<base64url(nonce || ciphertext)>`.
    pub fn seal(&self, plaintext: &[u8], ctx: &SealContext<'_>) -> String {
        self.current.seal(plaintext, ctx)
    }

    /// Decrypts a value from [`seal`](Self::seal) with the key it names.
    /// Fails with [`Error::Internal`] if the format is wrong, the key is not
    /// in the ring, or the value was altered or sealed for another context;
    /// the error carries nothing of the value.
    pub fn open(&self, sealed: &str, ctx: &SealContext<'_>) -> Result<Zeroizing<Vec<u8>>> {
        let (key_id, body) = parse_sealed(sealed)?;
        let key = self.key_by_id(key_id).ok_or_else(|| {
            Error::internal(format!("sealed value names master key {key_id:?}, which is not configured"))
        })?;
        let body = Zeroizing::new(
            URL_SAFE_NO_PAD.decode(body).map_err(|_| Error::internal("sealed value is not valid base64url"))?,
        );
        key.open(&body, ctx)
    }

    /// Whether `sealed` was sealed under a key other than the current one and
    /// should be re-sealed. A value that is not in the sealed format at all
    /// answers `false` (re-sealing cannot fix it; [`open`](Self::open) reports it).
    pub fn needs_reseal(&self, sealed: &str) -> bool {
        parse_sealed(sealed).is_ok_and(|(key_id, _)| key_id != self.current.id())
    }

    /// Opens `sealed` and seals it again under the current key.
    pub fn reseal(&self, sealed: &str, ctx: &SealContext<'_>) -> Result<String> {
        let plaintext = self.open(sealed, ctx)?;
        Ok(self.seal(&plaintext, ctx))
    }

    /// Hex HMAC-SHA256 of `data` under a subkey of the current master key
    /// derived for `purpose` (HMAC(master, "authd/keyed-hash/v1/" + purpose)).
    ///
    /// Used to store refresh tokens, recovery codes and login codes: a leaked
    /// database or Redis dump gives nothing to replay, and without the master
    /// key the hashes cannot even be brute-forced offline. The purpose keeps
    /// a hash of one kind of secret from matching another kind.
    pub fn keyed_hash(&self, purpose: &str, data: &[u8]) -> String {
        keyed_hash_with(&self.current, purpose, data)
    }

    /// [`keyed_hash`](Self::keyed_hash) under the current key, then under each
    /// previous key: what a lookup should try so that hashes stored before a
    /// master-key rotation still match.
    pub fn keyed_hash_candidates(&self, purpose: &str, data: &[u8]) -> Vec<String> {
        self.keys().map(|key| keyed_hash_with(key, purpose, data)).collect()
    }

    fn keys(&self) -> impl Iterator<Item = &MasterKey> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }

    fn key_by_id(&self, id: &str) -> Option<&MasterKey> {
        self.keys().find(|key| key.id() == id)
    }
}

fn keyed_hash_with(key: &MasterKey, purpose: &str, data: &[u8]) -> String {
    let mut label = Vec::with_capacity(KEYED_HASH_LABEL.len() + purpose.len());
    label.extend_from_slice(KEYED_HASH_LABEL.as_bytes());
    label.extend_from_slice(purpose.as_bytes());
    let subkey = key.derive(&label);
    let mut mac = hmac_sha256(&subkey);
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

fn hmac_sha256(key: &[u8; 32]) -> HmacSha256 {
    // HMAC zero-pads a short key to the hash's 64-byte block (RFC 2104 §2),
    // so padding it here gives the same MAC through the infallible
    // constructor.
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    <HmacSha256 as KeyInit>::new(&(*block).into())
}

/// Splits `v1.<key id>.<body>` into the key id and the body.
fn parse_sealed(sealed: &str) -> Result<(&str, &str)> {
    let mut parts = sealed.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(SEAL_VERSION), Some(key_id), Some(body)) if !key_id.is_empty() && !body.is_empty() => Ok((key_id, body)),
        _ => Err(Error::internal("value is not in the sealed format")),
    }
}

/// Compares two strings in time independent of where they differ, for
/// secrets and their hashes (defeats byte-by-byte timing attacks). Strings of
/// different lengths compare unequal at once: lengths are not secret here.
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// `bytes` random bytes from the OS generator, base64url without padding:
/// refresh tokens (32 bytes = 256 bits), login codes, challenge ids.
pub fn random_token(bytes: usize) -> String {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    fill_random(&mut buf);
    URL_SAFE_NO_PAD.encode(buf.as_slice())
}

/// `N` random bytes from the OS generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    fill_random(&mut buf);
    buf
}

fn fill_random(buf: &mut [u8]) {
    // The OS generator directly, not a user-space PRNG, so a forked or
    // snapshotted process never repeats a secret. If the OS cannot supply
    // randomness this aborts the task rather than hand out guessable bytes.
    rand::rngs::OsRng.fill_bytes(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn ctx<'a>(tenant: TenantId, purpose: &'a str, row: &'a str) -> SealContext<'a> {
        SealContext { tenant, purpose, row }
    }

    #[test]
    fn master_key_base64_round_trips_in_both_alphabets() {
        let key = MasterKey::generate();
        let standard = key.to_base64();
        let again = MasterKey::from_base64(&format!("  {standard}\n")).unwrap();
        assert_eq!(again.id(), key.id());

        let url_safe = URL_SAFE_NO_PAD.encode(key.bytes.as_slice());
        assert_eq!(MasterKey::from_base64(&url_safe).unwrap().id(), key.id());
    }

    #[test]
    fn master_key_of_the_wrong_length_is_refused_with_a_clear_message() {
        let short = STANDARD.encode([7u8; 16]);
        let err = MasterKey::from_base64(&short).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("exactly 32 bytes"), "{message}");
        assert!(message.contains("16 bytes"), "{message}");

        let err = MasterKey::from_base64("not base64 at all!").unwrap_err();
        assert!(err.to_string().contains("32"), "{err}");
    }

    #[test]
    fn patterned_master_keys_are_refused_as_weak() {
        for weak in [[0u8; 32], [b'a'; 32], *b"passwordpasswordpasswordpassword"] {
            let err = MasterKey::from_base64(&STANDARD.encode(weak)).unwrap_err();
            assert!(err.to_string().contains("does not look random"), "{err}");
        }
        let mut counting = [0u8; 32];
        for (i, b) in counting.iter_mut().enumerate() {
            *b = i as u8;
        }
        MasterKey::from_base64(&STANDARD.encode(counting)).unwrap();
    }

    #[test]
    fn master_key_id_is_stable_short_and_distinct() {
        let a = MasterKey::from_bytes([1u8; 32]);
        let b = MasterKey::from_bytes([1u8; 32]);
        let c = MasterKey::from_bytes([2u8; 32]);
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id().len(), 8);
        assert!(a.id().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = MasterKey::from_bytes([0xab; 32]);
        let shown = format!("{key:?} {:?}", Keyring::from(key.clone()));
        assert!(!shown.contains(&key.to_base64()), "{shown}");
        assert!(!shown.contains("171"), "{shown}"); // 0xab as a byte array
        assert!(shown.contains(key.id()));
    }

    #[test]
    fn sealed_values_open_under_the_same_context() {
        let ring = Keyring::from(MasterKey::generate());
        let tenant = TenantId::new();
        let c = ctx(tenant, "totp-secret", "user-1");
        let sealed = ring.seal(b"very secret", &c);
        assert!(sealed.starts_with(&format!("v1.{}.", ring.current().id())));
        assert!(!sealed.contains("very secret"));
        assert_eq!(ring.open(&sealed, &c).unwrap().as_slice(), b"very secret");
        // Random nonces: sealing twice never gives the same string.
        assert_ne!(sealed, ring.seal(b"very secret", &c));
    }

    #[test]
    fn sealed_values_moved_to_another_tenant_row_or_purpose_fail_to_open() {
        let ring = Keyring::from(MasterKey::generate());
        let tenant = TenantId::new();
        let sealed = ring.seal(b"secret", &ctx(tenant, "totp-secret", "user-1"));
        for wrong in [
            ctx(TenantId::new(), "totp-secret", "user-1"),
            ctx(tenant, "signing-key", "user-1"),
            ctx(tenant, "totp-secret", "user-2"),
            // Length prefixes: moving a separator between fields changes the AAD.
            ctx(tenant, "totp-secretu", "ser-1"),
        ] {
            let err = ring.open(&sealed, &wrong).unwrap_err();
            assert!(matches!(err, Error::Internal(_)), "{err:?}");
        }
    }

    #[test]
    fn tampered_or_malformed_sealed_values_fail_without_leaking() {
        let ring = Keyring::from(MasterKey::generate());
        let c = ctx(TenantId(Uuid::nil()), "p", "r");
        let sealed = ring.seal(b"plaintext-marker", &c);

        // Flip one bit of the ciphertext itself (not of the base64 text).
        let (prefix, body) = sealed.rsplit_once('.').unwrap();
        let mut body = URL_SAFE_NO_PAD.decode(body).unwrap();
        body[NONCE_LEN + 1] ^= 0x01;
        let flipped = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&body));
        assert!(matches!(ring.open(&flipped, &c), Err(Error::Internal(m)) if m.contains("failed authentication")));

        let id = ring.current().id().to_owned();
        let short = format!("v1.{id}.AAAA");
        for bad in [flipped.as_str(), "v1.abcd1234.", "v2.x.y", "garbage", &short] {
            let err = ring.open(bad, &c).unwrap_err();
            assert!(matches!(err, Error::Internal(_)), "{bad}: {err:?}");
            assert!(!err.cause().unwrap_or_default().contains("plaintext-marker"));
        }
    }

    #[test]
    fn rotation_opens_old_values_and_flags_them_for_reseal() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let c = ctx(TenantId::new(), "oauth-client-secret", "google");
        let sealed_old = Keyring::from(old.clone()).seal(b"s3cret", &c);

        let rotated = Keyring::new(new.clone(), vec![old]);
        assert!(rotated.needs_reseal(&sealed_old));
        assert_eq!(rotated.open(&sealed_old, &c).unwrap().as_slice(), b"s3cret");

        let resealed = rotated.reseal(&sealed_old, &c).unwrap();
        assert!(!rotated.needs_reseal(&resealed));
        assert!(resealed.starts_with(&format!("v1.{}.", new.id())));

        // A ring that has forgotten the old key cannot open it.
        let forgotten = Keyring::from(new);
        assert!(forgotten.open(&sealed_old, &c).is_err());
        assert!(!forgotten.needs_reseal("not sealed"));
    }

    #[test]
    fn keyed_hashes_depend_on_key_purpose_and_data() {
        let ring = Keyring::from(MasterKey::from_bytes([9u8; 32]));
        let h = ring.keyed_hash("refresh-token", b"token");
        assert_eq!(h.len(), 64);
        assert_eq!(h, ring.keyed_hash("refresh-token", b"token"));
        assert_ne!(h, ring.keyed_hash("recovery-code", b"token"));
        assert_ne!(h, ring.keyed_hash("refresh-token", b"token2"));
        let other = Keyring::from(MasterKey::from_bytes([8u8; 32]));
        assert_ne!(h, other.keyed_hash("refresh-token", b"token"));
        // Not a plain hash of the data.
        assert_ne!(h, hex::encode(Sha256::digest(b"token")));
    }

    #[test]
    fn keyed_hash_matches_its_documented_construction() {
        let master = [5u8; 32];
        let ring = Keyring::from(MasterKey::from_bytes(master));
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&master).unwrap();
        mac.update(b"authd/keyed-hash/v1/login-code");
        let subkey = mac.finalize().into_bytes();
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&subkey).unwrap();
        mac.update(b"abc");
        assert_eq!(ring.keyed_hash("login-code", b"abc"), hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn keyed_hash_candidates_cover_previous_keys() {
        let old = MasterKey::generate();
        let stored = Keyring::from(old.clone()).keyed_hash("recovery-code", b"code");
        let rotated = Keyring::new(MasterKey::generate(), vec![old]);
        assert_ne!(rotated.keyed_hash("recovery-code", b"code"), stored);
        let candidates = rotated.keyed_hash_candidates("recovery-code", b"code");
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates[0], rotated.keyed_hash("recovery-code", b"code"));
        assert!(candidates.iter().any(|c| ct_eq(c, &stored)));
    }

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
        assert!(ct_eq("", ""));
    }

    #[test]
    fn random_tokens_are_url_safe_unpadded_and_unique() {
        let t = random_token(32);
        assert_eq!(t.len(), 43); // 256 bits
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap().len(), 32);
        assert_ne!(t, random_token(32));
        let a: [u8; 16] = random_bytes();
        let b: [u8; 16] = random_bytes();
        assert_ne!(a, b);
    }
}
