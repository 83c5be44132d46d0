//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 6 digits, 30-second
//! steps, the parameters every authenticator app supports), their enrollment
//! URI and QR code, and recovery codes.
//!
//! Replay protection is the caller's: [`matching_step`] returns the step a
//! code matched, and the caller must refuse any step at or before the last
//! one it accepted for that user (RFC 6238 §5.2).

use std::fmt;

use data_encoding::BASE32_NOPAD;
use qrcode::QrCode;
use qrcode::render::svg;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

use crate::crypto::random_bytes;
use crate::error::{Error, Result};

/// Length of a TOTP secret: 160 bits, RFC 4226 §4's recommendation (the
/// HMAC-SHA1 output size).
pub const SECRET_LEN: usize = 20;
/// Seconds per time step (RFC 6238 §5.2).
pub const STEP_SECONDS: u64 = 30;
/// Digits per code.
pub const DIGITS: usize = 6;

/// A user's TOTP secret. Zeroized on drop; `Debug` never shows it.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<[u8; SECRET_LEN]>);

impl TotpSecret {
    /// A fresh secret from the OS random number generator.
    pub fn generate() -> Self {
        Self(Zeroizing::new(random_bytes()))
    }

    /// The secret from its raw bytes (e.g. just opened from its sealed form);
    /// anything but 20 bytes is [`Error::Internal`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bytes: [u8; SECRET_LEN] = bytes
            .try_into()
            .map_err(|_| Error::internal(format!("a TOTP secret is {SECRET_LEN} bytes, got {}", bytes.len())))?;
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// The raw bytes, to seal for storage.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// RFC 4648 base32 without padding, the form users type into an app.
    pub fn to_base32(&self) -> String {
        BASE32_NOPAD.encode(self.as_bytes())
    }

    fn builder(&self) -> Builder {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS as u8)
            .with_step_duration(STEP_SECONDS)
            .with_secret(Secret::new_stack(*self.0))
    }

    fn totp(&self) -> Result<Totp> {
        self.builder().build().map_err(|e| Error::internal(format!("TOTP parameters rejected: {e}")))
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([redacted])")
    }
}

/// The `otpauth://` URI an authenticator app enrolls from (the Key URI
/// format): `otpauth://totp/{issuer}:{label}?secret=...&issuer=...&algorithm=SHA1&digits=6&period=30`.
///
/// totp-rs builds it (percent-encoding issuer and label). The format forbids
/// a `:` inside either (apps split the label at the first colon, encoded or
/// not), so any is replaced by a space first. totp-rs leaves out parameters
/// that have their default values; they are spelled out here anyway, since
/// some apps otherwise guess differently.
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, label: &str) -> Result<String> {
    let issuer = issuer.replace(':', " ");
    let label = label.replace(':', " ");
    let totp = secret
        .builder()
        .with_issuer((!issuer.is_empty()).then_some(issuer))
        .with_account_name(label)
        .build()
        .map_err(|e| Error::internal(format!("TOTP parameters rejected: {e}")))?;
    let url = totp.to_url().map_err(|e| Error::internal(format!("otpauth URI: {e}")))?;
    Ok(format!("{url}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}"))
}

/// A QR code of `uri` as a standalone SVG document, rendered in process so
/// the secret never goes to a third-party QR service.
pub fn qr_svg(uri: &str) -> Result<String> {
    let code = QrCode::new(uri.as_bytes()).map_err(|e| Error::internal(format!("QR encoding failed: {e}")))?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build())
}

/// Reads a TOTP code as typed: exactly six ASCII digits, spaces anywhere
/// ignored (apps display `123 456`). Anything else is [`Error::MfaInvalid`].
pub fn parse_code(code: &str) -> Result<u32> {
    // Bound the work on hostile input before looking at it.
    if code.len() > 32 {
        return Err(Error::MfaInvalid);
    }
    let mut value: u32 = 0;
    let mut digits = 0;
    for b in code.bytes().filter(|b| *b != b' ') {
        if !b.is_ascii_digit() || digits == DIGITS {
            return Err(Error::MfaInvalid);
        }
        value = value * 10 + u32::from(b - b'0');
        digits += 1;
    }
    if digits == DIGITS { Ok(value) } else { Err(Error::MfaInvalid) }
}

/// The code for the time step containing `unix_seconds`, e.g. for tests and
/// tools; format it with `{:06}`.
pub fn code_at(secret: &TotpSecret, unix_seconds: u64) -> Result<u32> {
    let totp = secret.totp()?;
    hotp_at_step(&totp, unix_seconds / STEP_SECONDS).ok_or_else(|| Error::internal("TOTP computation failed"))
}

/// The time step (`now_unix / 30 + d`, `d` in -1..=1) whose code is `code`,
/// or `None`. One step of drift each way is accepted for clock skew and
/// typing time (RFC 6238 §5.2), no more.
///
/// All three candidates are computed and compared in constant time, so
/// timing reveals neither the code nor which step matched. The caller must
/// refuse a step it already accepted (replay).
pub fn matching_step(secret: &TotpSecret, code: u32, now_unix: u64) -> Option<u64> {
    let totp = secret.totp().ok()?;
    let current = now_unix / STEP_SECONDS;
    let mut matched = None;
    for step in [current.checked_sub(1), Some(current), current.checked_add(1)].into_iter().flatten() {
        let Some(expected) = hotp_at_step(&totp, step) else {
            continue;
        };
        if bool::from(expected.ct_eq(&code)) && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

/// The code of one time step, computed by totp-rs (RFC 6238 over RFC 4226's
/// HMAC and dynamic truncation).
fn hotp_at_step(totp: &Totp, step: u64) -> Option<u32> {
    totp.generate(step.checked_mul(STEP_SECONDS)?).to_string().parse().ok()
}

/// Crockford's base32 alphabet (lowercase): no `i`, `l`, `o` or `u`, so a
/// code read aloud or copied by hand cannot be misread.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const RECOVERY_SYMBOLS: usize = 12;

/// `n` fresh recovery codes, each `xxxx-xxxx-xxxx`: 12 symbols of a 32-symbol
/// alphabet, 60 bits of entropy. NIST SP 800-63B §5.1.2 asks look-up secrets
/// below 64 bits to be stored resistant to offline attack and their guesses
/// rate-limited: they are stored as keyed hashes, and MFA attempts are
/// limited per account.
///
/// Show them once; store only the keyed hash of [`normalize_recovery_code`]
/// of each.
pub fn generate_recovery_codes(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let bytes: Zeroizing<[u8; RECOVERY_SYMBOLS]> = Zeroizing::new(random_bytes());
            let mut code = String::with_capacity(RECOVERY_SYMBOLS + 2);
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 && i % 4 == 0 {
                    code.push('-');
                }
                // 256 is a multiple of 32: masking keeps every symbol equally likely.
                code.push(char::from(RECOVERY_ALPHABET[usize::from(b & 0x1f)]));
            }
            code
        })
        .collect()
}

/// The canonical form of a recovery code, applied before hashing both when
/// codes are created and when one is used: lowercase, without `-` or
/// whitespace, and with the letters Crockford's base32 reads as digits
/// (`o` as `0`, `i` and `l` as `1`) mapped to them, so a code typed as
/// `ABCD EFGH JK0O` matches `abcd-efgh-jk00`.
pub fn normalize_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'o' => '0',
            'i' | 'l' => '1',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B: the SHA1 seed is the ASCII string
    /// "12345678901234567890".
    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890").unwrap()
    }

    /// RFC 6238 Appendix B, SHA1 column: (time, 8-digit code). Six-digit codes
    /// are the same truncated number mod 10^6.
    const RFC_VECTORS: [(u64, u32); 6] = [
        (59, 94_287_082),
        (1_111_111_109, 7_081_804),
        (1_111_111_111, 14_050_471),
        (1_234_567_890, 89_005_924),
        (2_000_000_000, 69_279_037),
        (20_000_000_000, 65_353_130),
    ];

    #[test]
    fn codes_match_the_rfc_6238_sha1_vectors() {
        let secret = rfc_secret();
        for (time, code8) in RFC_VECTORS {
            let code6 = code8 % 1_000_000;
            assert_eq!(code_at(&secret, time).unwrap(), code6, "T={time}");
            assert_eq!(matching_step(&secret, code6, time), Some(time / 30), "T={time}");
        }
    }

    #[test]
    fn one_step_of_drift_is_accepted_two_are_not() {
        let secret = rfc_secret();
        let t = 1_234_567_890;
        let code = code_at(&secret, t).unwrap();
        let step = t / 30;
        // The code of step S is accepted while the clock is in S-1, S or S+1.
        assert_eq!(matching_step(&secret, code, t - 30), Some(step));
        assert_eq!(matching_step(&secret, code, t + 30), Some(step));
        assert_eq!(matching_step(&secret, code, t - 60), None);
        assert_eq!(matching_step(&secret, code, t + 60), None);
    }

    #[test]
    fn wrong_codes_and_other_secrets_do_not_match() {
        let secret = rfc_secret();
        let t = 1_111_111_111;
        let code = code_at(&secret, t).unwrap();
        assert_eq!(matching_step(&secret, (code + 1) % 1_000_000, t), None);
        assert_eq!(matching_step(&TotpSecret::generate(), code, t), None);
        assert_eq!(matching_step(&secret, 10_000_000, t), None);
    }

    #[test]
    fn early_times_do_not_underflow() {
        let secret = rfc_secret();
        let code = code_at(&secret, 0).unwrap();
        assert_eq!(matching_step(&secret, code, 0), Some(0));
        assert_eq!(matching_step(&secret, code, 45), Some(0));
    }

    #[test]
    fn codes_parse_only_as_six_digits() {
        assert_eq!(parse_code("123456").unwrap(), 123_456);
        assert_eq!(parse_code(" 012 345 ").unwrap(), 12_345);
        for bad in ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", "+12345", "-12345", "123\u{a0}456", &"1".repeat(100)]
        {
            assert!(matches!(parse_code(bad), Err(Error::MfaInvalid)), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_160_bits_base32_and_never_debug_printed() {
        let secret = TotpSecret::generate();
        assert_eq!(secret.as_bytes().len(), 20);
        assert_eq!(secret.to_base32().len(), 32);
        assert_ne!(secret.as_bytes(), TotpSecret::generate().as_bytes());
        assert_eq!(rfc_secret().to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let shown = format!("{secret:?}");
        assert!(!shown.contains(&secret.to_base32()), "{shown}");
        assert!(TotpSecret::from_bytes(&[0; 16]).is_err());
        let copy = TotpSecret::from_bytes(secret.as_bytes()).unwrap();
        assert_eq!(copy.as_bytes(), secret.as_bytes());
    }

    #[test]
    fn otpauth_uri_is_encoded_and_parsable() {
        let secret = rfc_secret();
        let uri = otpauth_uri(&secret, "Acme Corp", "alice@example.com").unwrap();
        assert_eq!(
            uri,
            "otpauth://totp/Acme%20Corp:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Acme%20Corp&algorithm=SHA1&digits=6&period=30"
        );
        // An independent parser (totp-rs) reads back the same account.
        let parsed = Totp::from_url(&uri).unwrap();
        assert_eq!(parsed.issuer(), Some("Acme Corp"));
        assert_eq!(parsed.account_name(), "alice@example.com");
        assert_eq!(parsed.secret().as_bytes(), secret.as_bytes());
        assert_eq!((parsed.digits(), parsed.step()), (6, 30));
    }

    #[test]
    fn otpauth_uri_cannot_be_split_by_a_colon_or_injected() {
        let uri = otpauth_uri(&rfc_secret(), "Evil:Corp", "a&secret=AAAA:b?x").unwrap();
        let (_, query) = uri.split_once('?').unwrap();
        assert_eq!(query.matches("secret=").count(), 1, "{uri}");
        let parsed = Totp::from_url(&uri).unwrap();
        assert_eq!(parsed.issuer(), Some("Evil Corp"));
        assert_eq!(parsed.account_name(), "a&secret=AAAA b?x");
    }

    #[test]
    fn qr_code_is_an_svg_document() {
        let svg = qr_svg(&otpauth_uri(&rfc_secret(), "Acme", "alice@example.com").unwrap()).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<path"));
        assert!(qr_svg(&"x".repeat(10_000)).is_err());
    }

    #[test]
    fn recovery_codes_are_unique_unambiguous_and_60_bits() {
        let codes = generate_recovery_codes(10);
        assert_eq!(codes.len(), 10);
        let unique: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(unique.len(), 10);
        for code in &codes {
            assert_eq!(code.len(), 14, "{code}");
            let parts: Vec<_> = code.split('-').collect();
            assert_eq!(parts.len(), 3);
            assert!(parts.iter().all(|p| p.len() == 4));
            assert!(code.bytes().filter(|b| *b != b'-').all(|b| RECOVERY_ALPHABET.contains(&b)));
            assert!(!code.contains(['i', 'l', 'o', 'u']));
            assert_eq!(normalize_recovery_code(code), code.replace('-', ""));
        }
        assert!(RECOVERY_ALPHABET.len().pow(RECOVERY_SYMBOLS as u32) >= 1 << 60);
    }

    #[test]
    fn recovery_codes_normalise_as_typed() {
        assert_eq!(normalize_recovery_code("ABCD-EFGH-JK01"), "abcdefghjk01");
        assert_eq!(normalize_recovery_code(" abcd efgh jkOI "), "abcdefghjk01");
        assert_eq!(normalize_recovery_code("abcd-efgh-jk0l"), "abcdefghjk01");
        assert_ne!(normalize_recovery_code("abcd-efgh-jk02"), "abcdefghjk01");
    }
}
