//! What the release checks read from `cargo metadata`: the workspace's public crates, their
//! docs.rs feature set, and the resolved dependency graph.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The output of `cargo metadata --format-version 1` (with the given extra arguments).
pub(crate) fn metadata(extra: &[&str]) -> Result<Value, String> {
    let cargo = cargo();
    let out = Command::new(&cargo)
        .args(["metadata", "--format-version", "1"])
        .args(extra)
        .current_dir(root())
        .output()
        .map_err(|e| format!("{cargo} metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata output: {e}"))
}

/// The cargo that runs this task.
pub(crate) fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The workspace members that may be published (no `publish = false`), in the order
/// `cargo metadata` lists them.
pub(crate) fn public_members(meta: &Value) -> Vec<&Value> {
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(&id)))
        .filter(|p| !p["publish"].as_array().is_some_and(Vec::is_empty))
        .collect()
}

/// A package's name.
pub(crate) fn name(package: &Value) -> &str {
    package["name"].as_str().unwrap_or_default()
}

/// The directory holding a package's `Cargo.toml`.
pub(crate) fn dir(package: &Value) -> PathBuf {
    Path::new(package["manifest_path"].as_str().unwrap_or_default())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The cargo feature arguments that select what docs.rs builds for `package`, from its
/// `[package.metadata.docs.rs]` (`all-features`, `features`, `no-default-features`).
pub(crate) fn docs_rs_feature_args(package: &Value) -> Vec<String> {
    let docs = &package["metadata"]["docs"]["rs"];
    let mut args = Vec::new();
    if docs["all-features"].as_bool() == Some(true) {
        args.push("--all-features".to_owned());
        return args;
    }
    if docs["no-default-features"].as_bool() == Some(true) {
        args.push("--no-default-features".to_owned());
    }
    let features: Vec<&str> = docs["features"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !features.is_empty() {
        args.push("--features".to_owned());
        args.push(features.join(","));
    }
    args
}

/// A `rust-version` as a comparable triple (`"1.88"` is `1.88.0`).
pub(crate) fn rust_version(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.split('.').map(str::parse::<u64>);
    let major = parts.next()?.ok()?;
    let minor = parts.next().unwrap_or(Ok(0)).ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_versions_compare_with_missing_parts_as_zero() {
        assert_eq!(rust_version("1.88"), Some((1, 88, 0)));
        assert_eq!(rust_version("1.89.0"), Some((1, 89, 0)));
        assert!(rust_version("1.88").unwrap() < rust_version("1.88.1").unwrap());
        assert_eq!(rust_version("nightly"), None);
    }

    #[test]
    fn docs_rs_features_become_cargo_arguments() {
        let all = serde_json::json!({"metadata": {"docs": {"rs": {"all-features": true}}}});
        assert_eq!(docs_rs_feature_args(&all), ["--all-features"]);
        let list = serde_json::json!({"metadata": {"docs": {"rs": {"features": ["a", "b"]}}}});
        assert_eq!(docs_rs_feature_args(&list), ["--features", "a,b"]);
        let none = serde_json::json!({"metadata": null});
        assert!(docs_rs_feature_args(&none).is_empty());
    }
}
