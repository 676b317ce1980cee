//! `cargo xtask public-api [--bless] [-p CRATE]...`: each public crate's public API, one item a
//! line, against the snapshot committed next to its `Cargo.toml` (`public-api.txt`), so that a
//! change to what a crate exposes shows up as a reviewed diff.
//!
//! The items come from rustdoc's JSON output, rendered by the [`public_api`] library (the one
//! behind `cargo public-api`). Rustdoc writes JSON only as an unstable option; the stable
//! toolchain allows it with `RUSTC_BOOTSTRAP=1`, which this task sets for the rustdoc process
//! alone (through a `RUSTDOC` wrapper), so the dependencies' build artifacts stay the ones the
//! other cargo commands use.
//!
//! A crate's surface is taken with the features docs.rs documents
//! (`[package.metadata.docs.rs]`: all of them, or all but the test-only `testing`); when that
//! differs from the default features, the items missing from a default build end in
//! `// non-default feature`. Blanket impls (`impl<T> From<T> for T`, ...) are left out; auto
//! trait impls (`Send`, `Sync`, `Unpin`, ...) stay, since losing one breaks users.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::meta;

/// The rustdoc JSON format [`public_api`] 0.52.1 reads (its rustdoc-types 0.57), and the one the
/// Rust 1.95 toolchain writes. Another toolchain may write another: then `public-api` in the
/// root `Cargo.toml` is bumped to the release that reads it, and the snapshots re-blessed.
const FORMAT_VERSION: u64 = 57;

const SNAPSHOT: &str = "public-api.txt";
const MARK: &str = " // non-default feature";

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let mut bless = false;
    let mut only = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bless" => bless = true,
            "-p" | "--package" => only.push(args.next().ok_or("-p needs a crate name")?.clone()),
            _ => return Err("usage: cargo xtask public-api [--bless] [-p CRATE]...".to_owned()),
        }
    }
    let meta = meta::metadata(&["--no-deps"])?;
    let target = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"));
    let rustdoc = wrapper(&target)?;
    let mut changed = Vec::new();
    for package in meta::public_members(&meta) {
        let name = meta::name(package);
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let current = surface(package, &target, &rustdoc)?;
        let path = meta::dir(package).join(SNAPSHOT);
        let committed = fs::read_to_string(&path).unwrap_or_default();
        if committed == current {
            eprintln!("xtask public-api: {name}: unchanged");
        } else if bless {
            fs::write(&path, &current).map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("xtask public-api: {name}: wrote {}", path.display());
        } else {
            let shown = path.strip_prefix(meta::root()).unwrap_or(&path);
            println!("--- {} (committed)", shown.display());
            println!("+++ {name} (this tree)");
            print!("{}", diff(&committed, &current));
            changed.push(name.to_owned());
        }
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the public API of {} differs from its snapshot (diff above). If the change is \
             intended, run `cargo xtask public-api --bless` and commit the updated \
             public-api.txt with it",
            changed.join(", ")
        ))
    }
}

/// The snapshot text of one crate.
fn surface(package: &Value, target: &Path, rustdoc: &Path) -> Result<String, String> {
    let name = meta::name(package);
    let docs_args = meta::docs_rs_feature_args(package);
    let documented = items(package, &docs_args, target, rustdoc)?;
    let default: Option<HashSet<String>> = if docs_args.is_empty() {
        None
    } else {
        Some(items(package, &[], target, rustdoc)?.into_iter().collect())
    };
    let features = if docs_args.is_empty() {
        "default features".to_owned()
    } else {
        docs_args.join(" ")
    };
    let mut out = format!(
        "# The public API of {name} ({features}: what docs.rs documents), one item a line.\n\
         # Checked by `cargo xtask public-api`; rewritten by `cargo xtask public-api --bless`.\n"
    );
    let mut body = String::new();
    let mut marked = false;
    for item in &documented {
        body.push_str(item);
        if default.as_ref().is_some_and(|d| !d.contains(item)) {
            body.push_str(MARK);
            marked = true;
        }
        body.push('\n');
    }
    if let Some(default) = &default {
        // Items only a default build has (`cfg(not(feature = ..))`).
        let documented: HashSet<&String> = documented.iter().collect();
        let mut only_default: Vec<&String> =
            default.iter().filter(|i| !documented.contains(i)).collect();
        only_default.sort();
        for item in only_default {
            body.push_str(&format!("{item} // default features only\n"));
        }
    }
    if marked {
        out.push_str("# Items ending in `// non-default feature` are not in a default build.\n");
    }
    out.push('\n');
    out.push_str(&body);
    Ok(out)
}

/// The rendered public items of `package` built with the feature arguments `features`.
fn items(
    package: &Value,
    features: &[String],
    target: &Path,
    rustdoc: &Path,
) -> Result<Vec<String>, String> {
    let name = meta::name(package);
    let lib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "lib"))
        })
        .and_then(|t| t["name"].as_str())
        .ok_or_else(|| format!("{name} has no library target"))?
        .replace('-', "_");
    let json = target.join("doc").join(format!("{lib}.json"));
    let _ = fs::remove_file(&json);
    let cargo = meta::cargo();
    let status = Command::new(&cargo)
        .args(["rustdoc", "--quiet", "--locked", "--lib", "-p", name])
        .args(features)
        .args(["--", "-Z", "unstable-options", "--output-format", "json"])
        .env("RUSTDOC", rustdoc)
        .current_dir(meta::root())
        .status()
        .map_err(|e| format!("{cargo} rustdoc: {e}"))?;
    if !status.success() {
        return Err(format!("cargo rustdoc -p {name} (JSON) failed: {status}"));
    }
    let text = fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let format: Value = serde_json::from_str(&text).map_err(|e| format!("{lib}.json: {e}"))?;
    let found = format["format_version"].as_u64().unwrap_or_default();
    if found != FORMAT_VERSION {
        return Err(format!(
            "rustdoc wrote JSON format {found}, but the public-api crate xtask uses reads format \
             {FORMAT_VERSION}: bump `public-api` in the root Cargo.toml to the release that \
             reads format {found} (see its changelog), update FORMAT_VERSION in \
             xtask/src/public_api.rs, then re-bless the snapshots"
        ));
    }
    let api = public_api::Builder::from_rustdoc_json(&json)
        .omit_blanket_impls(true)
        .build()
        .map_err(|e| format!("{name}: reading rustdoc JSON: {e}"))?;
    Ok(api.items().map(ToString::to_string).collect())
}

/// A script that runs the real rustdoc with `RUSTC_BOOTSTRAP=1`, given to cargo as `RUSTDOC`.
fn wrapper(target: &Path) -> Result<PathBuf, String> {
    let real = std::env::var("RUSTDOC").unwrap_or_else(|_| "rustdoc".to_owned());
    let dir = target.join("xtask");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("rustdoc-json");
    let script = format!(
        "#!/bin/sh\n# Written by `cargo xtask public-api`: rustdoc with its unstable JSON output \
         allowed.\nRUSTC_BOOTSTRAP=1 exec '{}' \"$@\"\n",
        real.replace('\'', r"'\''")
    );
    // Rewritten only when it changes, so cargo sees the same rustdoc as last time.
    if fs::read_to_string(&path).ok().as_deref() != Some(script.as_str()) {
        fs::write(&path, script).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// A line diff of `old` to `new` (`-` removed, `+` added, two lines of context).
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence, on what remains after the common prefix and suffix.
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (xa, xb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut lcs = vec![vec![0u32; xb.len() + 1]; xa.len() + 1];
    for i in (0..xa.len()).rev() {
        for j in (0..xb.len()).rev() {
            lcs[i][j] = if xa[i] == xb[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, line): ' ' kept, '-' removed, '+' added.
    let mut ops: Vec<(char, &str)> = a[..pre].iter().map(|l| (' ', *l)).collect();
    let (mut i, mut j) = (0, 0);
    while i < xa.len() || j < xb.len() {
        if i < xa.len() && j < xb.len() && xa[i] == xb[j] {
            ops.push((' ', xa[i]));
            i += 1;
            j += 1;
        } else if i < xa.len() && (j == xb.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', xa[i]));
            i += 1;
        } else {
            ops.push(('+', xb[j]));
            j += 1;
        }
    }
    ops.extend(a[a.len() - suf..].iter().map(|l| (' ', *l)));
    let near_change = |k: usize| {
        let lo = k.saturating_sub(2);
        let hi = (k + 3).min(ops.len());
        ops[lo..hi].iter().any(|(t, _)| *t != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (tag, line)) in ops.iter().enumerate() {
        if near_change(k) {
            if skipped {
                out.push_str("@@\n");
                skipped = false;
            }
            out.push_str(&format!("{tag}{line}\n"));
        } else {
            skipped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_shows_changes_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\n";
        assert_eq!(diff(old, new), "@@\n c\n d\n-e\n+E\n f\n g\n h\n+i\n");
        assert_eq!(diff("x\n", "x\n"), "");
        assert_eq!(diff("", "x\n"), "+x\n");
    }
}
