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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A raw HTTP/1.1 request (no client library needed).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The README's first command, as a newcomer runs it: `authd serve` with
/// nothing configured serves the platform API on the embedded default, with
/// the token in a 0600 file under ./authd-data, and the data survives a restart.
#[test]
fn the_readme_run_command_serves_the_platform_api_on_the_embedded_default() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    assert!(readme.contains("cargo run -p authd -- serve"), "README's first command");
    assert!(readme.contains("scripts/test.sh"), "README's second command");
    let cwd = temp_dir();
    let port = free_port();
    let start = || {
        authd()
            .arg("serve")
            .current_dir(&cwd)
            .env("AUTHD_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUTHD_SHUTDOWN_DELAY_SECS", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_ready = || {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("authd did not start");
    };
    let stop = |mut child: std::process::Child| {
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = child.wait().unwrap();
        assert!(status.success(), "SIGTERM exits 0: {status:?}");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        err
    };
    let child = start();
    wait_ready();
    let token_path = cwd.join("authd-data/platform-token");
    // The port may answer a moment before the token file is there (another
    // process may even have held the free port briefly): wait for both.
    for _ in 0..200 {
        if token_path.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    wait_ready();
    let token = std::fs::read_to_string(&token_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let body = r#"{"query":"mutation { createTenant(input: {slug: \"acme\", name: \"Acme\", adminEmail: \"admin@acme.test\", adminPassword: \"a long admin passphrase\"}) { slug } }"}"#;
    let auth = format!("Bearer {}", token.trim());
    let resp = http(port, "POST", "/graphql", &[("Authorization", &auth), ("Content-Type", "application/json")], body);
    assert!(resp.contains(r#""slug":"acme""#), "{resp}");
    let logs = stop(child);
    assert!(!logs.contains(token.trim()), "the token itself is never logged");
    assert!(logs.contains("platform-token"), "the log names the token file");
    // Restart: same token, the tenant is still there.
    let child = start();
    wait_ready();
    let resp = http(port, "GET", "/t/acme/.well-known/jwks.json", &[], "");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""kty":"EC""#), "{resp}");
    stop(child);
}
