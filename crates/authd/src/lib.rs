//! The `authd` binary as a library: configuration, start-up (storage, token
//! store, actors, listeners), graceful shutdown and the CLI's commands. Tests
//! start the whole server in process through [`start`].
//!
//! Layout:
//! - [`config`]: every environment variable, validated into [`config::Config`].
//! - [`server`]: building the dependencies, serving, and shutting down.
//! - [`cli`]: the `authd` subcommands.
//! - [`telemetry`]: logs, and OpenTelemetry traces over OTLP when configured.

pub mod cli;
pub mod config;
pub mod server;
pub mod telemetry;

pub use server::{Running, start};
