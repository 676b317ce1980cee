//! `cargo xtask package-list`: what `cargo package` puts in each public crate's `.crate`.
//!
//! Each package must hold both license files (the crate folders link to the root's), the
//! README and the sources, and nothing of what only the repository needs: tests and benches
//! (they need the unpublished test kit), the Node benchmark baseline, the benchmark notes and
//! the API snapshot. The packages' size stays small that way; `cargo publish --dry-run` in
//! `.ci/run` then builds them.

use std::process::Command;

use crate::meta;

/// Files every package has.
const REQUIRED: &[&str] = &[
    "Cargo.toml",
    "README.md",
    "LICENSE-MIT",
    "LICENSE-APACHE",
    "src/lib.rs",
];

/// Path prefixes and file names no package has.
const FORBIDDEN_PREFIXES: &[&str] = &["tests/", "benches/", "bench/", "target/"];
const FORBIDDEN_NAMES: &[&str] = &[
    "BENCHMARKS.md",
    "public-api.txt",
    "package.json",
    "package-lock.json",
    ".gitignore",
];

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: cargo xtask package-list".to_owned());
    }
    let meta = meta::metadata(&["--no-deps"])?;
    let cargo = meta::cargo();
    let mut problems = Vec::new();
    for package in meta::public_members(&meta) {
        let name = meta::name(package);
        let out = Command::new(&cargo)
            .args(["package", "--list", "--locked", "--allow-dirty", "-p", name])
            .current_dir(meta::root())
            .output()
            .map_err(|e| format!("{cargo} package: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo package --list -p {name} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        problems.extend(check(name, &files));
        eprintln!("xtask package-list: {name}: {} files", files.len());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "package contents:\n  {}\n(set `exclude` in the crate's Cargo.toml, or add the \
             missing file)",
            problems.join("\n  ")
        ))
    }
}

/// What is wrong with the file list of one package.
fn check(name: &str, files: &[String]) -> Vec<String> {
    let mut problems: Vec<String> = REQUIRED
        .iter()
        .filter(|r| !files.iter().any(|f| f == *r))
        .map(|r| format!("{name}: {r} is missing"))
        .collect();
    for file in files {
        let base = file.rsplit('/').next().unwrap_or(file);
        if FORBIDDEN_PREFIXES.iter().any(|p| file.starts_with(p))
            || FORBIDDEN_NAMES.contains(&base)
            || file.contains("node_modules/")
        {
            problems.push(format!("{name}: {file} is packaged"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn a_complete_package_passes() {
        let files = list(&[
            "Cargo.toml",
            "README.md",
            "LICENSE-MIT",
            "LICENSE-APACHE",
            "src/lib.rs",
            "examples/demo.rs",
        ]);
        assert!(check("c", &files).is_empty());
    }

    #[test]
    fn missing_licenses_and_repository_files_are_reported() {
        let files = list(&[
            "Cargo.toml",
            "README.md",
            "src/lib.rs",
            "bench/package.json",
            "tests/a.rs",
        ]);
        let problems = check("c", &files);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("LICENSE-MIT"));
        assert!(problems.iter().any(|p| p.contains("bench/package.json")));
    }
}
