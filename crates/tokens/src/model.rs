//! Records kept in the token store.

use authd_core::{SessionId, UserId};
use serde::{Deserialize, Serialize};

/// A session: one refresh-token family, and the `sid` of its access tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub user_id: UserId,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used_at: i64,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// RFC 8176 methods the session was established with.
    pub amr: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    Rotated(SessionRecord),
    /// The token was already rotated: the session (this id) is now revoked.
    Reused {
        session: SessionId,
        user: UserId,
    },
    NotFound,
    /// The session's rate limit (see [`SessionLimit`]) refused the rotation;
    /// nothing changed.
    Limited {
        retry_after_ms: u64,
    },
}

/// A per-session rate limit checked by a rotation in the same atomic step
/// (`TokenStore::rotate_refresh`): `limit` rotations per `period` under the
/// key `{key_prefix}{sid}`, on the caller's clock `now_ms`.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimit<'a> {
    pub key_prefix: &'a str,
    pub limit: u32,
    pub period: std::time::Duration,
    pub now_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed {
        remaining: u32,
    },
    /// Refused; the next request is allowed after this many milliseconds.
    Limited {
        retry_after_ms: u64,
    },
}
