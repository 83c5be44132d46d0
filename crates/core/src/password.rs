//! Password hashing (argon2id, PHC strings) and the password policy.
//!
//! Hashing is slow on purpose (tens of milliseconds): callers run
//! [`hash_password`] and [`verify_password`] on the blocking pool, never on
//! an async task or inside an actor (docs/architecture.md).
//!
//! Passwords are NFKC-normalised before hashing (NIST SP 800-63B §5.1.1.2),
//! so the same password typed on two keyboards that produce different code
//! points for it (full-width forms, composed accents) still matches.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, OnceLock};

use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use parking_lot::Mutex;
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use crate::crypto::random_token;
use crate::error::{Error, Result};

/// Argon2id cost parameters. The default is OWASP's minimum recommendation
/// for argon2id: 19 MiB, 2 iterations, 1 lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Argon2Params {
    /// Memory per hash in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Params {
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

impl Argon2Params {
    fn hasher(&self) -> Result<Argon2<'static>> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| Error::internal(format!("invalid argon2 parameters {self:?}: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// The outcome of [`verify_password`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The password matches the hash.
    pub ok: bool,
    /// The hash was made with another algorithm or other parameters than the
    /// configured ones: when `ok`, hash the password again and store that.
    pub needs_rehash: bool,
}

/// Hashes `password` with argon2id under `params` and a random 128-bit salt,
/// as a PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
pub fn hash_password(params: &Argon2Params, password: &str) -> Result<String> {
    let hasher = params.hasher()?;
    let normalised = normalise(password);
    let salt: [u8; 16] = crate::crypto::random_bytes();
    let output_len = Params::DEFAULT_OUTPUT_LEN;
    let mut out = Zeroizing::new(vec![0u8; output_len]);
    compute(&hasher, normalised.as_bytes(), &salt, &mut out)?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: argon2::password_hash::phc::ParamsString::try_from(hasher.params())
            .map_err(|e| Error::internal(format!("argon2 parameters cannot be encoded: {e}")))?,
        salt: Some(
            argon2::password_hash::phc::Salt::new(&salt).map_err(|e| Error::internal(format!("argon2 salt: {e}")))?,
        ),
        hash: Some(
            argon2::password_hash::phc::Output::new(&out)
                .map_err(|e| Error::internal(format!("argon2 output: {e}")))?,
        ),
    };
    Ok(phc.to_string())
}

thread_local! {
    /// Each hashing thread keeps its argon2 memory (19 MiB by default) and
    /// reuses it: allocating it per hash costs thousands of page faults and
    /// some 40% more CPU per login, as the load tool measured.
    static MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs argon2 into `out` with this thread's reusable memory.
fn compute(hasher: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> Result<()> {
    let blocks = hasher.params().block_count();
    MEMORY.with(|cell| {
        let mut memory = cell.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        hasher
            .hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
            .map_err(|e| Error::internal(format!("argon2 hashing failed: {e}")))
    })
}

/// Checks `password` against a stored PHC string. The hash's own algorithm
/// and parameters are used to verify; `params` only decides `needs_rehash`.
///
/// A wrong password is `Ok(Verified { ok: false, .. })`; a PHC string that
/// cannot be parsed or names an unknown algorithm is [`Error::Internal`]
/// (storage is corrupt, which is not the user's fault).
pub fn verify_password(params: &Argon2Params, phc: &str, password: &str) -> Result<Verified> {
    let parsed =
        PasswordHash::new(phc).map_err(|e| Error::internal(format!("stored password hash is malformed: {e}")))?;
    let corrupt = |e: &dyn std::fmt::Display| Error::internal(format!("stored password hash cannot be verified: {e}"));
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(|e| corrupt(&e))?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| corrupt(&e))?,
        None => Version::default(),
    };
    let hash_params = Params::try_from(&parsed).map_err(|e| corrupt(&e))?;
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(corrupt(&"no salt or hash"));
    };
    let normalised = normalise(password);
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    compute(&Argon2::new(algorithm, version, hash_params), normalised.as_bytes(), salt.as_ref(), &mut out)?;
    // Constant time: the comparison does not reveal how much matched.
    let ok: bool = subtle::ConstantTimeEq::ct_eq(out.as_slice(), expected.as_bytes()).into();
    Ok(Verified { ok, needs_rehash: needs_rehash(params, &parsed) })
}

fn needs_rehash(params: &Argon2Params, parsed: &PasswordHash) -> bool {
    let same_algorithm = parsed.algorithm == argon2::ARGON2ID_IDENT;
    let same_version = parsed.version == Some(Version::V0x13.into());
    let same_params = Params::try_from(parsed).is_ok_and(|p| {
        p.m_cost() == params.memory_kib
            && p.t_cost() == params.iterations
            && p.p_cost() == params.parallelism
            && p.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN) == Params::DEFAULT_OUTPUT_LEN
    });
    !(same_algorithm && same_version && same_params)
}

/// A valid hash, under `params`, of a random password nobody knows. Login
/// for an unknown email verifies against it, so that it costs exactly one
/// real argon2 verification like a known email does: response time does not
/// reveal which emails are registered (docs/api.md, "cost the same work").
///
/// Computed once per distinct `params` and cached for the process.
pub fn dummy_phc(params: &Argon2Params) -> Result<String> {
    // A handful of parameter sets at most (they come from configuration);
    // the cap only guards against a caller passing ever-new values.
    const MAX_CACHED: usize = 16;
    static CACHE: OnceLock<Mutex<HashMap<Argon2Params, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));

    if let Some(phc) = cache.lock().get(params) {
        return Ok(phc.clone());
    }
    // Hash outside the lock: it takes tens of milliseconds. Two first callers
    // may both compute one; either result is as good as the other.
    let password = Zeroizing::new(random_token(32));
    let phc = hash_password(params, &password)?;
    let mut cache = cache.lock();
    if cache.len() < MAX_CACHED {
        return Ok(cache.entry(*params).or_insert(phc).clone());
    }
    Ok(phc)
}

fn normalise(password: &str) -> Zeroizing<String> {
    Zeroizing::new(password.nfkc().collect())
}

/// The longest password accepted, in bytes: long passphrases are welcome,
/// megabyte "passwords" are a denial-of-service attempt.
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// The bounds a tenant's `passwordMinLength` lies within (docs/api.md).
const MIN_LENGTH_BOUNDS: (usize, usize) = (8, 64);

/// The common passwords refused at registration, one per line, lowercase
/// (zxcvbn's list, see `data/README.md`).
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt").lines().map(str::trim).filter(|line| !line.is_empty()).collect()
});

/// The rules a new password must meet, after NIST SP 800-63B §5.1.1.2: a
/// minimum length, a generous maximum, no composition rules, and not one of
/// the most common passwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Minimum length in Unicode characters; the tenant's
    /// `passwordMinLength`, 8 to 64 (values outside are clamped).
    pub min_length: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self { min_length: MIN_LENGTH_BOUNDS.0 }
    }
}

impl PasswordPolicy {
    /// Accepts `password` or says, in a sentence for the user, why not
    /// ([`Error::BadInput`] on the field `password`).
    pub fn check(&self, password: &str) -> Result<()> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Error::bad_input(
                "password",
                format!("The password is too long; it can be at most {MAX_PASSWORD_BYTES} bytes."),
            ));
        }
        // Clamped so that a bad setting can neither drop below NIST's floor
        // nor make every password impossible.
        let min_length = self.min_length.clamp(MIN_LENGTH_BOUNDS.0, MIN_LENGTH_BOUNDS.1);
        if password.chars().count() < min_length {
            return Err(Error::bad_input(
                "password",
                format!("The password is too short; it must be at least {min_length} characters long."),
            ));
        }
        if is_common(password) {
            return Err(Error::bad_input(
                "password",
                "This password is one of the most commonly used passwords; please choose another.",
            ));
        }
        Ok(())
    }
}

/// Whether `password` is on the common list, ignoring case and Unicode form
/// ("PassWord1" and full-width "ｐａｓｓｗｏｒｄ１" are as weak as "password1").
fn is_common(password: &str) -> bool {
    let folded = Zeroizing::new(password.nfkc().collect::<String>().to_lowercase());
    COMMON_PASSWORDS.contains(folded.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters so the tests stay fast; the real cost is covered by
    /// `default_params_are_owasp_argon2id`.
    const FAST: Argon2Params = Argon2Params { memory_kib: 64, iterations: 1, parallelism: 1 };

    fn bad_input_message(result: Result<()>) -> String {
        match result {
            Err(Error::BadInput { field, message }) => {
                assert_eq!(field.as_deref(), Some("password"));
                message
            }
            other => panic!("expected BadInput, got {other:?}"),
        }
    }

    #[test]
    fn default_params_are_owasp_argon2id() {
        let params = Argon2Params::default();
        assert_eq!((params.memory_kib, params.iterations, params.parallelism), (19456, 2, 1));
        let phc = hash_password(&params, "correct horse battery staple").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    }

    #[test]
    fn hash_then_verify_accepts_the_password_and_refuses_others() {
        let phc = hash_password(&FAST, "correct horse battery staple").unwrap();
        assert!(!phc.contains("correct"));
        let good = verify_password(&FAST, &phc, "correct horse battery staple").unwrap();
        assert_eq!(good, Verified { ok: true, needs_rehash: false });
        let bad = verify_password(&FAST, &phc, "correct horse battery stapler").unwrap();
        assert!(!bad.ok);
    }

    #[test]
    fn salts_are_random() {
        let a = hash_password(&FAST, "same password").unwrap();
        let b = hash_password(&FAST, "same password").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn unicode_forms_of_the_same_password_match() {
        // "é" precomposed vs "e" + combining acute; full-width digits.
        let phc = hash_password(&FAST, "caf\u{e9} 123").unwrap();
        assert!(verify_password(&FAST, &phc, "cafe\u{301} \u{ff11}\u{ff12}\u{ff13}").unwrap().ok);
    }

    /// The reusable-memory path must agree with the library's own hasher and
    /// verifier both ways (same PHC strings, same answers).
    #[test]
    fn reused_memory_agrees_with_the_argon2_crate() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let ours = hash_password(&FAST, "interop password").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(normalise("interop password").as_bytes(), &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"other password", &parsed).is_err());
        let theirs = FAST.hasher().unwrap().hash_password(b"interop password").unwrap().to_string();
        assert!(verify_password(&FAST, &theirs, "interop password").unwrap().ok);
        assert!(!verify_password(&FAST, &theirs, "interop passwore").unwrap().ok);
        // Different sizes on one thread reuse (and grow) the same memory.
        let big = Argon2Params { memory_kib: 256, ..FAST };
        let phc = hash_password(&big, "grow").unwrap();
        assert!(verify_password(&big, &phc, "grow").unwrap().ok);
        assert!(verify_password(&FAST, &ours, "interop password").unwrap().ok);
    }

    #[test]
    fn changed_parameters_ask_for_a_rehash() {
        let phc = hash_password(&FAST, "pw-abcdefgh").unwrap();
        let stronger = Argon2Params { memory_kib: 128, ..FAST };
        let v = verify_password(&stronger, &phc, "pw-abcdefgh").unwrap();
        assert_eq!(v, Verified { ok: true, needs_rehash: true });

        // Another argon2 variant verifies but should be upgraded to argon2id.
        use argon2::PasswordHasher;
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(64, 1, 1, None).unwrap());
        let phc_i = argon2i.hash_password(b"pw-abcdefgh").unwrap().to_string();
        assert!(phc_i.starts_with("$argon2i$"));
        let v = verify_password(&FAST, &phc_i, "pw-abcdefgh").unwrap();
        assert_eq!(v, Verified { ok: true, needs_rehash: true });
    }

    #[test]
    fn malformed_hashes_are_internal_errors() {
        for bad in ["", "plaintext", "$argon2id$v=19$m=64,t=1,p=1$", "$bcrypt$whatever"] {
            let err = verify_password(&FAST, bad, "password").unwrap_err();
            assert!(matches!(err, Error::Internal(_)), "{bad}: {err:?}");
        }
    }

    #[test]
    fn dummy_hash_is_a_real_hash_under_the_params_and_is_cached() {
        let phc = dummy_phc(&FAST).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        let v = verify_password(&FAST, &phc, "anything").unwrap();
        assert_eq!(v, Verified { ok: false, needs_rehash: false });
        assert_eq!(dummy_phc(&FAST).unwrap(), phc);
        let other = Argon2Params { iterations: 2, ..FAST };
        assert!(dummy_phc(&other).unwrap().contains("t=2"));
    }

    #[test]
    fn invalid_params_are_internal_errors() {
        let broken = Argon2Params { memory_kib: 1, iterations: 0, parallelism: 0 };
        assert!(matches!(hash_password(&broken, "x"), Err(Error::Internal(_))));
    }

    #[test]
    fn the_common_list_has_ten_thousand_lowercase_entries() {
        assert_eq!(COMMON_PASSWORDS.len(), 10_000);
        assert!(COMMON_PASSWORDS.iter().all(|p| *p == p.to_lowercase()));
        assert!(COMMON_PASSWORDS.contains("password"));
    }

    #[test]
    fn length_is_counted_in_characters_not_bytes() {
        let policy = PasswordPolicy { min_length: 8 };
        // 7 characters, 21 bytes: too short.
        let msg = bad_input_message(policy.check("ぱすわーどだよ"));
        assert!(msg.contains("at least 8 characters"), "{msg}");
        // 8 characters pass.
        policy.check("ぱすわーどだよね").unwrap();
        policy.check("zq7#mx!v").unwrap();
        assert!(policy.check("zq7#mx!").is_err());
    }

    #[test]
    fn min_length_follows_the_setting_within_its_bounds() {
        let policy = PasswordPolicy { min_length: 20 };
        assert!(policy.check("a-fine-passphrase-19").is_ok());
        assert!(policy.check("a-fine-passphrase-1").is_err());
        // Below 8 is clamped up to NIST's floor; above 64 down to 64.
        assert!(PasswordPolicy { min_length: 2 }.check("zq7#mx!").is_err());
        let long = "x".repeat(63) + "y";
        assert!(PasswordPolicy { min_length: 500 }.check(&long).is_ok());
    }

    #[test]
    fn more_than_4096_bytes_is_refused() {
        let policy = PasswordPolicy::default();
        policy.check(&"a1b2".repeat(1024)).unwrap();
        let msg = bad_input_message(policy.check(&"a1b2".repeat(1024).replacen('a', "é", 1)));
        assert!(msg.contains("4096 bytes"), "{msg}");
    }

    #[test]
    fn common_passwords_are_refused_whatever_their_case() {
        let policy = PasswordPolicy::default();
        for common in ["password", "PassWord", "iloveyou", "QWERTYUIOP", "password1", "ｐａｓｓｗｏｒｄ"] {
            let msg = bad_input_message(policy.check(common));
            assert!(msg.contains("commonly used"), "{common}: {msg}");
        }
        // No composition rules: a long lowercase passphrase is fine.
        policy.check("purple elephants dance quietly").unwrap();
    }
}
