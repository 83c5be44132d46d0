//! Domain types of authd: identifiers, tenant settings and policies, token
//! claims, the domain error, and the pure cryptography the layers above use
//! (sealing, keyed hashes, signing keys and JWTs, password hashing, TOTP).
//!
//! This crate does no I/O: it knows nothing of databases, Redis, HTTP or
//! actors.
//!
//! Layout:
//! - [`ids`]: `TenantId`, `UserId`, `SessionId`, `Slug`.
//! - [`error`]: the domain [`Error`] and the contract's [`ErrorCode`]s.
//! - [`settings`]: `TenantSettings`, `RateLimitPolicy`, `Role`, `SigningAlgorithm`.
//! - [`email`]: email normalisation.
//! - [`claims`]: access-token claims.
//! - [`crypto`]: the master key, AEAD sealing bound to tenant/purpose/row, keyed hashes, random tokens.
//! - [`keys`]: per-tenant signing keys, JWKS, JWT signing and verification.
//! - [`password`]: argon2id hashing and the password policy.
//! - [`records`]: the stored records (tenants, users, keys, events, providers, clients, passkeys, mail) every layer passes around.
//! - [`totp`]: RFC 6238 codes, otpauth URIs and QR codes.

pub mod claims;
pub mod crypto;
pub mod email;
pub mod error;
pub mod ids;
pub mod keys;
pub mod mail;
pub mod password;
pub mod records;
pub mod settings;
pub mod totp;

pub use error::{Error, ErrorCode, Result};
pub use ids::{EventId, SessionId, Slug, TenantId, UserId};
