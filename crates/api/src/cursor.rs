//! Opaque Relay cursors, shared by both schemas: base64url of a row key, and
//! for event pages `<rfc3339 micros>|<id>` (keyset order: time, then id).

use authd_core::{Error, EventId};
use base64::Engine;
use chrono::{DateTime, Utc};

fn bad() -> Error {
    Error::bad_input("after", "not a cursor from this API")
}

pub fn encode(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

/// The key inside an `after` cursor.
pub fn decode(cursor: &str) -> Result<String, Error> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)
}

pub fn event(at: DateTime<Utc>, id: EventId) -> String {
    encode(&format!("{}|{}", at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), id))
}

pub fn parse_event(cursor: &str) -> Result<authd_core::records::EventCursor, Error> {
    let raw = decode(cursor)?;
    let (at, id) = raw.split_once('|').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| bad())?.with_timezone(&Utc);
    Ok((at, id.parse().map_err(|_| bad())?))
}
