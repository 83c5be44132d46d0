//! The `authd` binary as an operator meets it: help on every subcommand, one
//! clear line and a non-zero exit for a bad setting, tenants created from the
//! command line with the password never on argv.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

fn authd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_authd"));
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("authd-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["schema", "--help"],
        vec!["tenant", "--help"],
        vec!["tenant", "create", "--help"],
    ] {
        let out = authd().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
}

#[test]
fn bad_settings_stop_start_up_with_one_line_naming_the_variable() {
    for (var, value) in [
        ("AUTHD_LISTEN", "not-an-address"),
        ("DATABASE_URL", "mysql://localhost/x"),
        ("AUTHD_MASTER_KEY", "dG9vIHNob3J0"),
        ("AUTHD_TRUSTED_PROXIES", "10.0.0.0/99"),
        ("AUTHD_ADMIN_LISTEN", "::nope"),
    ] {
        let dir = temp_dir();
        let out = authd().arg("serve").env("AUTHD_DATA_DIR", &dir).env(var, value).output().unwrap();
        assert!(!out.status.success(), "{var}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{var}: expected one line, got {err:?}");
        assert!(lines[0].contains(var), "{var}: {err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    }
}

#[test]
fn unreachable_postgres_is_one_line_naming_database_url() {
    let dir = temp_dir();
    let out = authd()
        .arg("serve")
        .env("AUTHD_DATA_DIR", &dir)
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/authd")
        .env("AUTHD_MASTER_KEY", "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8w=")
        .env("AUTHD_PLATFORM_TOKEN", "x".repeat(40))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("authd: DATABASE_URL"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn schema_prints_both_sdls() {
    for (which, needle) in [("platform", "createTenant"), ("tenant", "login(input: LoginInput!)")] {
        let out = authd().args(["schema", which]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains(needle));
    }
}

#[test]
fn tenant_create_reads_the_password_from_stdin_and_persists_across_restarts() {
    let dir = temp_dir();
    let mut child = authd()
        .args(["tenant", "create", "--slug", "cli-acme", "--name", "Acme", "--admin-email", "ops@acme.test"])
        .env("AUTHD_DATA_DIR", &dir)
        .env("AUTHD_ARGON2_MEMORY_KIB", "64")
        .env("AUTHD_ARGON2_ITERATIONS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"a long enough admin passphrase\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created tenant cli-acme"));
    // The same slug again is refused with the contract's code: the first one persisted.
    let out = authd()
        .args(["tenant", "create", "--slug", "cli-acme", "--name", "Acme", "--admin-email", "ops@acme.test"])
        .env("AUTHD_DATA_DIR", &dir)
        .env("AUTHD_ADMIN_PASSWORD", "a long enough admin passphrase")
        .env("AUTHD_ARGON2_MEMORY_KIB", "64")
        .env("AUTHD_ARGON2_ITERATIONS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BAD_USER_INPUT"));
}

#[test]
fn reseal_moves_every_sealed_key_to_the_new_master_key() {
    let dir = temp_dir();
    let k1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let k2 = "H+Dd3B8eHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQ=";
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let mut c = authd();
        c.args(args)
            .env("AUTHD_DATA_DIR", &dir)
            .env("AUTHD_ARGON2_MEMORY_KIB", "64")
            .env("AUTHD_ARGON2_ITERATIONS", "1")
            .env("AUTHD_ADMIN_PASSWORD", "a long enough admin passphrase");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(
        &["tenant", "create", "--slug", "seal-a", "--name", "A", "--admin-email", "a@a.test"],
        &[("AUTHD_MASTER_KEY", k1)],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Under the new key alone, the old sealed signing key cannot be opened.
    let out = run(&["reseal"], &[("AUTHD_MASTER_KEY", k2)]);
    assert!(!out.status.success(), "opening needs the previous key");
    let out = run(&["reseal"], &[("AUTHD_MASTER_KEY", k2), ("AUTHD_MASTER_KEY_PREVIOUS", k1)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("resealed 1 signing keys"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Now everything opens with the new key alone, and nothing is left to do.
    let out = run(&["reseal"], &[("AUTHD_MASTER_KEY", k2)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("resealed 0 signing keys"));
}
