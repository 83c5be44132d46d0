//! Black-box tests: each starts a whole authd (in process, on a free port)
//! and talks to it over HTTP, on the embedded default and on Postgres + Redis.
//! One test binary, to keep link times down.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

mod admin;
mod audit;
mod email;
mod graphiql;
mod helm;
mod hygiene;
mod limits;
mod mfa;
mod oauth;
mod passkeys;
mod platform;
mod restart;
mod rls;
mod schema;
mod smoke;
mod sso;
mod supervision;
mod tls;
mod tokens;
