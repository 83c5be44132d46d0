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

/// The generation of a session's first refresh token.
pub const FIRST_GENERATION: u64 = 1;

/// A presented refresh token, as the store finds it.
///
/// A refresh token names its session and its place in the session's chain
/// of rotations: the `generation`-th token of session `sid`. The caller has
/// checked that authd issued it (its MAC under the master key), so the store
/// keeps no trace of the token itself: a session remembers only its current
/// generation. An earlier generation presented again is a copy someone kept.
///
/// Tokens issued before tokens named their session are found by their keyed
/// hash (`Hashed`), for as long as they live; a rotation of one moves its
/// session to [`FIRST_GENERATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshKey<'a> {
    Named { sid: SessionId, generation: u64 },
    Hashed(&'a str),
}

impl RefreshKey<'_> {
    /// The generation of the token a rotation of this one issues.
    pub fn next_generation(&self) -> u64 {
        match *self {
            RefreshKey::Named { generation, .. } => generation.saturating_add(1),
            RefreshKey::Hashed(_) => FIRST_GENERATION,
        }
    }

    /// The token a rotation of this one issues, `session` being the session
    /// the rotation answered with.
    pub fn successor(&self, session: SessionId) -> RefreshKey<'static> {
        RefreshKey::Named { sid: session, generation: self.next_generation() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The session, whose current token is now the presented one's
    /// [`RefreshKey::successor`].
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
