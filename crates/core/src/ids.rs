//! Identifiers. Tenancy is a type: every store and token-store method takes a
//! [`TenantId`], so there is no way to ask for a user without saying whose.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7), so ids sort by creation.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Uuid::parse_str(s.trim())
                    .map(Self)
                    .map_err(|_| Error::bad_input_msg(None, concat!("not a valid ", stringify!($name))))
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// A tenant's id (the `tid` claim).
    TenantId
);
uuid_id!(
    /// A user's id (the `sub` claim).
    UserId
);
uuid_id!(
    /// A session (refresh-token family) id (the `sid` claim).
    SessionId
);
uuid_id!(
    /// An audit event's id.
    EventId
);

/// A tenant's slug: 3 to 63 characters of `a-z`, `0-9` and `-`, neither first
/// nor last a `-` (docs/api.md, Endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

impl Slug {
    pub fn parse(s: &str) -> Result<Self> {
        let ok_len = (3..=63).contains(&s.len());
        let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ok_ends = !s.starts_with('-') && !s.ends_with('-');
        if ok_len && ok_chars && ok_ends {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::bad_input(
                "slug",
                "a slug is 3 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Slug {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<Slug> for String {
    fn from(s: Slug) -> String {
        s.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_rules_follow_the_contract() {
        for good in ["abc", "acme-corp", "a1-b2", &"a".repeat(63)] {
            assert!(Slug::parse(good).is_ok(), "{good}");
        }
        for bad in ["ab", "-abc", "abc-", "ABC", "a_b_c", "a.bc", "", &"a".repeat(64)] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }
}
