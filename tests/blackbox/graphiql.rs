//! GraphiQL renders in a real headless Chromium from assets served by authd
//! itself, under the content-security policy, with no third-party script.

use crate::harness::{Backend, TestServer};

/// Python with selenium, and the scripts folder, as `scripts/test.sh` exports them.
pub fn test_python() -> (String, std::path::PathBuf) {
    let python = std::env::var("AUTHD_TEST_PYTHON")
        .expect("AUTHD_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs the test tools");
    let scripts = std::env::var("AUTHD_TEST_SCRIPTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"));
    (python, scripts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphiql_renders_in_headless_chromium_with_only_same_origin_scripts() {
    let s = TestServer::start(Backend::Embedded).await;
    let t = s.tenant().await;
    let (python, scripts) = test_python();
    let png = s.data_dir.join("graphiql.png");
    let url = format!("{}/t/{}/graphql", s.url, t.slug);
    let out = tokio::process::Command::new(&python)
        .arg(scripts.join("graphiql_screenshot.py"))
        .arg(&url)
        .arg(&png)
        .output()
        .await
        .expect("run graphiql_screenshot.py");
    assert!(
        out.status.success(),
        "GraphiQL check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    // Keep a copy for people to look at.
    let keep = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/graphiql-screenshot.png");
    let _ = std::fs::copy(&png, keep);
}
