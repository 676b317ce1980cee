//! `cargo xtask msrv`: fails when a dependency in the locked graph needs a newer Rust than the
//! `rust-version` the public crates declare.
//!
//! The graph is `cargo metadata --all-features --locked`: every feature of every crate, every
//! target platform, the versions `Cargo.lock` pins. What counts:
//!
//! * **normal and build dependencies of the public crates**, transitively: what a user's build
//!   compiles. One of these needing a newer Rust than the declared `rust-version` makes the
//!   declaration false, so the check fails and names the path to it.
//! * **everything else in the lock** (dev-dependencies, the unpublished members' dependencies):
//!   what building the tests and tools of this repository compiles. These are listed as notes
//!   and do not fail the check: a test-only crate needing a newer Rust does not raise what a
//!   user needs.
//!
//! The crates' own code is held to the same `rust-version` by clippy's `incompatible_msrv`
//! lint (on by default), which `.ci/run` runs with `-D warnings`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::Value;

use crate::meta;

type Version = (u64, u64, u64);

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: cargo xtask msrv".to_owned());
    }
    let meta = meta::metadata(&["--all-features", "--locked"])?;
    let report = check(&meta)?;
    for note in &report.notes {
        eprintln!("xtask msrv: note: {note}");
    }
    if report.errors.is_empty() {
        eprintln!("xtask msrv: {}", report.summary);
        Ok(())
    } else {
        for e in &report.errors {
            eprintln!("xtask msrv: {e}");
        }
        Err(format!(
            "{} dependencies need a newer Rust than the declared rust-version. Raise \
             `rust-version` in the root Cargo.toml (and the README), or pin an older version \
             with `cargo update -p <crate> --precise <version>`",
            report.errors.len()
        ))
    }
}

/// What the check found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Public crates' dependencies newer than their `rust-version`.
    pub(crate) errors: Vec<String>,
    /// Other locked packages newer than the declared `rust-version`.
    pub(crate) notes: Vec<String>,
    /// One line: the declared and the needed versions.
    pub(crate) summary: String,
}

pub(crate) fn check(meta: &Value) -> Result<Report, String> {
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .ok_or("cargo metadata has no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .ok_or("cargo metadata has no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let needs = |id: &str| -> Option<Version> {
        meta::rust_version(packages.get(id)?["rust_version"].as_str()?)
    };
    let label = |id: &str| -> String {
        packages.get(id).map_or_else(
            || id.to_owned(),
            |p| format!("{} {}", meta::name(p), p["version"].as_str().unwrap_or("?")),
        )
    };

    let mut report = Report::default();
    let mut declared_max: Option<Version> = None;
    let mut needed: Option<(Version, String)> = None;
    // Every package some public crate's normal or build graph reaches.
    let mut reached: BTreeMap<&str, ()> = BTreeMap::new();
    // Each package needing a newer Rust than a public crate declares: what it needs, that
    // declaration, the public crates reaching it, and the path from the first of them.
    let mut offending: BTreeMap<&str, (Version, Version, Vec<&str>, String)> = BTreeMap::new();
    for crate_ in meta::public_members(meta) {
        let name = meta::name(crate_);
        let id = crate_["id"].as_str().unwrap_or_default();
        let declared = crate_["rust_version"]
            .as_str()
            .and_then(meta::rust_version)
            .ok_or_else(|| format!("{name} declares no rust-version"))?;
        declared_max = declared_max.max(Some(declared));
        // Breadth-first over normal and build edges, remembering each package's parent for
        // the path printed on failure.
        let mut parent: HashMap<&str, &str> = HashMap::new();
        let mut queue = VecDeque::from([id]);
        parent.insert(id, id);
        while let Some(at) = queue.pop_front() {
            reached.insert(at, ());
            if let Some(v) = needs(at)
                && at != id
            {
                let member = meta["workspace_members"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m == at));
                if !member && needed.as_ref().is_none_or(|(n, _)| v > *n) {
                    needed = Some((v, label(at)));
                }
                if v > declared {
                    let entry = offending.entry(at).or_insert_with(|| {
                        let mut path = vec![label(at)];
                        let mut step = at;
                        while parent[step] != step {
                            step = parent[step];
                            path.push(meta::name(packages[step]).to_owned());
                        }
                        path.reverse();
                        (v, declared, Vec::new(), path.join(" -> "))
                    });
                    entry.2.push(name);
                }
            }
            let Some(node) = nodes.get(at) else { continue };
            for dep in node["deps"].as_array().into_iter().flatten() {
                let non_dev = dep["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| matches!(k["kind"].as_str(), None | Some("build")));
                let Some(pkg) = dep["pkg"].as_str() else {
                    continue;
                };
                if non_dev && !parent.contains_key(pkg) {
                    parent.insert(pkg, at);
                    queue.push_back(pkg);
                }
            }
        }
    }
    let mut offending: Vec<_> = offending.into_iter().collect();
    offending.sort_by(|(a, (va, ..)), (b, (vb, ..))| vb.cmp(va).then(label(a).cmp(&label(b))));
    for (at, (v, declared, users, path)) in offending {
        report.errors.push(format!(
            "{} needs Rust {}, newer than the declared {} of {}: {path}",
            label(at),
            show(v),
            show(declared),
            users.join(", ")
        ));
    }
    let declared = declared_max.ok_or("the workspace has no public crate")?;
    let mut others: Vec<(Version, String)> = nodes
        .keys()
        .filter(|id| !reached.contains_key(*id))
        .filter_map(|id| Some((needs(id)?, label(id))))
        .filter(|(v, _)| *v > declared)
        .collect();
    others.sort();
    for (v, what) in others {
        report.notes.push(format!(
            "{what} (only for tests, benches or tools) needs Rust {}, newer than {}",
            show(v),
            show(declared)
        ));
    }
    report.summary = match needed {
        Some((v, what)) => format!(
            "the public crates declare rust-version {}; their dependencies need at most {} ({what})",
            show(declared),
            show(v)
        ),
        None => format!(
            "the public crates declare rust-version {}; no dependency declares one",
            show(declared)
        ),
    };
    Ok(report)
}

fn show((major, minor, patch): Version) -> String {
    if patch == 0 {
        format!("{major}.{minor}")
    } else {
        format!("{major}.{minor}.{patch}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn graph(app_rv: &str, lib_rv: &str, dev_rv: &str) -> Value {
        json!({
            "workspace_members": ["app"],
            "packages": [
                {"id": "app", "name": "app", "version": "0.1.0", "rust_version": app_rv, "publish": null},
                {"id": "lib", "name": "lib", "version": "1.2.3", "rust_version": lib_rv},
                {"id": "deep", "name": "deep", "version": "0.3.0", "rust_version": lib_rv},
                {"id": "dev", "name": "dev", "version": "2.0.0", "rust_version": dev_rv},
            ],
            "resolve": {"nodes": [
                {"id": "app", "deps": [
                    {"pkg": "lib", "dep_kinds": [{"kind": null}]},
                    {"pkg": "dev", "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": "lib", "deps": [{"pkg": "deep", "dep_kinds": [{"kind": "build"}]}]},
                {"id": "deep", "deps": []},
                {"id": "dev", "deps": []},
            ]},
        })
    }

    #[test]
    fn a_normal_dependency_newer_than_declared_fails_with_its_path() {
        let report = check(&graph("1.85", "1.89", "1.80")).unwrap();
        assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
        assert!(
            report.errors[0].contains("app -> lib -> deep 0.3.0"),
            "{:?}",
            report.errors
        );
        assert!(
            report.errors[1].contains("app -> lib 1.2.3"),
            "{:?}",
            report.errors
        );
        assert!(
            report.errors[1].contains("needs Rust 1.89"),
            "{:?}",
            report.errors
        );
        assert!(report.notes.is_empty());
    }

    #[test]
    fn a_dev_dependency_newer_than_declared_is_a_note() {
        let report = check(&graph("1.89", "1.89", "1.91")).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.notes.len(), 1);
        assert!(report.notes[0].contains("dev 2.0.0"));
        assert!(
            report.summary.contains("at most 1.89"),
            "{}",
            report.summary
        );
    }
}
