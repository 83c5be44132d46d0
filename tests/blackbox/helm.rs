//! The Helm chart (`helm/authd`) cannot drift from the binary's configuration:
//! every variable the chart names must be one authd reads
//! (`authd::config::VARIABLES`), secret ones must come only from the Secret
//! (as `NAME_FILE` files, never through the ConfigMap), and every non-secret
//! one must be settable through the ConfigMap. Pure text: the chart's
//! templates are Go templates, not YAML, until Helm renders them; rendering
//! and schema validation are `scripts/check-helm.sh`'s job.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use authd::config::VARIABLES;

/// Variables the chart sets that are not in `VARIABLES`, and why.
const EXTRA_VARIABLES: &[(&str, &str)] = &[
    // tracing-subscriber's EnvFilter reads it (crates/authd/src/main.rs);
    // the README documents it next to AUTHD_LOG_FORMAT.
    ("RUST_LOG", "log filter read by tracing-subscriber"),
];

/// Non-secret variables the ConfigMap deliberately does not offer, and why.
/// Empty today: every setting is reachable from values.yaml. (AUTHD_DATA_DIR
/// is offered, but rendered only in evaluation mode: with Postgres authd
/// writes nothing, and the image's root filesystem is read-only.)
const LEFT_OUT: &[(&str, &str)] = &[];

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/authd")
}

fn chart_file(rel: &str) -> String {
    let path = chart_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every file of the chart: (path relative to the chart, contents).
fn chart_files() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rel in ["Chart.yaml", "README.md", "values.yaml", "values.schema.json"] {
        out.push((rel.to_owned(), chart_file(rel)));
    }
    let dir = chart_dir().join("templates");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let rel = format!("templates/{name}");
        out.push((rel.clone(), chart_file(&rel)));
    }
    out
}

/// Words made of A-Z, 0-9 and `_` that start with a letter: the shape of an
/// environment variable's name.
fn upper_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            w.starts_with(|c: char| c.is_ascii_uppercase())
                && w.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// A word that names (or should name) one of authd's variables.
fn is_authd_like(word: &str) -> bool {
    word.starts_with("AUTHD_") || word.starts_with("DATABASE_URL") || word.starts_with("REDIS_URL")
}

fn secret_variables() -> BTreeSet<&'static str> {
    VARIABLES.iter().filter(|(_, secret, _)| *secret).map(|(name, _, _)| *name).collect()
}

fn known(name: &str) -> Option<bool> {
    VARIABLES.iter().find(|(n, _, _)| *n == name).map(|(_, secret, _)| *secret)
}

/// The keys of the ConfigMap's `data:` (lines `  NAME: ...`, conditional or not).
fn configmap_keys(template: &str) -> BTreeSet<String> {
    let data = template.split_once("\ndata:\n").map(|(_, d)| d).expect("configmap.yaml has a data: section");
    data.lines()
        .filter_map(|l| l.trim_start().split_once(':').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && upper_words(k).contains(*k))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_variable_the_chart_names_is_one_authd_reads() {
    let secrets = secret_variables();
    let mut unknown = Vec::new();
    for (file, text) in chart_files() {
        for word in upper_words(&text) {
            // `AUTHD_*` in prose names the family, not a variable.
            if word.starts_with("OTEL_") || word.ends_with('_') || !is_authd_like(&word) {
                continue;
            }
            // NAME_FILE is how a secret NAME is given as a file.
            let name = match word.strip_suffix("_FILE") {
                Some(base) if secrets.contains(base) => base,
                _ => word.as_str(),
            };
            if known(name).is_none() {
                unknown.push(format!("{file}: {word}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the chart names variables that authd does not read (crates/authd/src/config.rs VARIABLES): {unknown:?}"
    );
}

#[test]
fn configmap_sets_only_non_secret_variables_and_offers_every_one() {
    let template = chart_file("templates/configmap.yaml");
    let keys = configmap_keys(&template);
    for key in &keys {
        let extra = EXTRA_VARIABLES.iter().any(|(n, _)| n == key);
        match known(key) {
            Some(true) => panic!("configmap.yaml sets the secret variable {key}: secrets come from the Secret"),
            Some(false) => {}
            None if key.starts_with("OTEL_") || extra => {}
            None => panic!("configmap.yaml sets {key}, which authd does not read"),
        }
    }
    for secret in secret_variables() {
        assert!(!upper_words(&template).contains(secret), "configmap.yaml mentions the secret variable {secret}");
    }
    for (name, secret, _) in VARIABLES {
        if *secret {
            continue;
        }
        let left_out = LEFT_OUT.iter().any(|(n, _)| n == name);
        assert!(
            keys.contains(*name) != left_out,
            "{name}: {}",
            if left_out {
                "listed in LEFT_OUT but the ConfigMap sets it"
            } else {
                "non-secret variable not offered by helm/authd/templates/configmap.yaml (add it, or list it in LEFT_OUT with a reason)"
            }
        );
    }
    for (name, _) in LEFT_OUT {
        assert_eq!(known(name), Some(false), "LEFT_OUT names {name}, not a non-secret variable of authd");
    }
    // The OpenTelemetry endpoint is one of the chart's values.
    assert!(keys.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "configmap.yaml does not offer OTEL_EXPORTER_OTLP_ENDPOINT");
}

#[test]
fn secret_variables_come_only_from_the_secret_as_files() {
    let secrets = secret_variables();
    let helpers = chart_file("templates/_helpers.tpl");

    // The one list the Secret, the pods' NAME_FILE variables and the volume
    // items are made from.
    let start = helpers.find(r#"define "authd.secretVariables""#).expect("_helpers.tpl defines authd.secretVariables");
    let body = &helpers[start..];
    let body = &body[..body.find("{{- end }}").expect("authd.secretVariables ends")];
    let listed: BTreeSet<String> = upper_words(body).into_iter().filter(|w| is_authd_like(w)).collect();
    let want: BTreeSet<String> = secrets.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, want, "authd.secretVariables in _helpers.tpl differs from the secret VARIABLES");

    // Each one can be given in values.yaml: in secret.existingSecretKeys and
    // in secret.values, and the schema knows it in both.
    let values = chart_file("values.yaml");
    let schema = chart_file("values.schema.json");
    for name in &secrets {
        let as_key = values.lines().filter(|l| l.trim_start().starts_with(&format!("{name}:"))).count();
        assert!(as_key >= 2, "values.yaml: {name} missing from secret.existingSecretKeys or secret.values");
        let in_schema = schema.matches(&format!("\"{name}\"")).count();
        assert!(in_schema >= 2, "values.schema.json: {name} missing from secret.existingSecretKeys or secret.values");
    }

    // Secret names appear only in the helpers, NOTES.txt and Secret manifests;
    // the workloads take them from the helper list, as NAME_FILE.
    for (file, text) in chart_files() {
        if !file.starts_with("templates/") {
            continue;
        }
        let named: Vec<&&str> = secrets.iter().filter(|s| upper_words(&text).contains(**s)).collect();
        if named.is_empty() || file.ends_with("_helpers.tpl") || file.ends_with("NOTES.txt") {
            continue;
        }
        assert!(
            text.contains("kind: Secret"),
            "{file} names secret variables {named:?} outside a Secret: pods get them as NAME_FILE from the helper list"
        );
    }
    for workload in ["templates/deployment.yaml", "templates/migration-job.yaml"] {
        let text = chart_file(workload);
        assert!(text.contains("{{ $name }}_FILE"), "{workload}: secret variables must be passed as NAME_FILE");
        assert!(!text.contains("secretKeyRef"), "{workload}: a secret as an environment value (secretKeyRef)");
        assert!(text.contains("secret:") && text.contains("readOnly: true"), "{workload}: no read-only Secret volume");
    }
}

#[test]
fn the_chart_deploys_this_version() {
    let chart = chart_file("Chart.yaml");
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("Chart.yaml has appVersion");
    assert_eq!(app_version, env!("CARGO_PKG_VERSION"), "Chart.yaml appVersion differs from the workspace version");
    assert!(chart.contains("apiVersion: v2"), "Chart.yaml must be apiVersion v2 (Helm 3 and 4)");
}
