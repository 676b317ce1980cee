//! `cargo xtask readme [--bless]`: each public crate's `README.md` opens with the first example
//! of its `src/lib.rs` documentation, which is a doctest, so the README's example is the tested
//! one.
//!
//! The README's first ```` ```rust ```` block must equal the first code block of the crate
//! docs (`//!` lines) with rustdoc's hidden lines shown (`# line` becomes `line`), so the README
//! reads as a whole program. `--bless` rewrites the README's block from `lib.rs`. A crate whose
//! `lib.rs` includes its README (`#![doc = include_str!("../README.md")]`) has its README
//! doctested directly and is skipped.

use std::fs;

use crate::meta;

pub(crate) fn main(args: &[String]) -> Result<(), String> {
    let bless = match args {
        [] => false,
        [flag] if flag == "--bless" => true,
        _ => return Err("usage: cargo xtask readme [--bless]".to_owned()),
    };
    let meta = meta::metadata(&["--no-deps"])?;
    let mut stale = Vec::new();
    for package in meta::public_members(&meta) {
        let name = meta::name(package);
        let dir = meta::dir(package);
        let lib = fs::read_to_string(dir.join("src/lib.rs"))
            .map_err(|e| format!("{name}: src/lib.rs: {e}"))?;
        let readme_path = dir.join("README.md");
        let readme = fs::read_to_string(&readme_path)
            .map_err(|e| format!("{name}: README.md: {e} (every public crate has one)"))?;
        if lib.contains("include_str!(\"../README.md\")") {
            eprintln!("xtask readme: {name}: lib.rs includes README.md (doctested as is)");
            continue;
        }
        let example = first_doc_example(&lib)
            .ok_or_else(|| format!("{name}: src/lib.rs has no example in its crate docs"))?;
        let (start, end) = readme_block(&readme).ok_or_else(|| {
            format!("{name}: README.md has no ```rust block (run `cargo xtask readme --bless`?)")
        })?;
        let lines: Vec<&str> = readme.lines().collect();
        if lines[start + 1..end] == example.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            eprintln!("xtask readme: {name}: README example matches lib.rs");
            continue;
        }
        if bless {
            let mut out: Vec<String> = lines[..=start].iter().map(|l| (*l).to_owned()).collect();
            out.extend(example);
            out.extend(lines[end..].iter().map(|l| (*l).to_owned()));
            fs::write(&readme_path, out.join("\n") + "\n")
                .map_err(|e| format!("{}: {e}", readme_path.display()))?;
            eprintln!("xtask readme: {name}: README example rewritten from lib.rs");
        } else {
            stale.push(name.to_owned());
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the first example of README.md differs from the first example of src/lib.rs in: \
             {}. Edit the example in src/lib.rs (it is the doctest), then run \
             `cargo xtask readme --bless` and commit the README",
            stale.join(", ")
        ))
    }
}

/// The first fenced code block of the `//!` crate docs, hidden lines shown.
fn first_doc_example(lib: &str) -> Option<Vec<String>> {
    let docs = lib
        .lines()
        .map(str::trim_start)
        .take_while(|l| l.starts_with("//!") || l.starts_with("#![") || l.is_empty())
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l));
    let mut block = None;
    for line in docs {
        match &mut block {
            None if line.starts_with("```") => block = Some(Vec::new()),
            None => {}
            Some(_) if line.starts_with("```") => return block,
            Some(lines) => lines.push(unhide(line)),
        }
    }
    None
}

/// Rustdoc's hidden-line rule: `# x` and a lone `#` are hidden, `##` is an escaped `#`.
fn unhide(line: &str) -> String {
    let indent = line.len() - line.trim_start().len();
    let (lead, rest) = line.split_at(indent);
    if rest == "#" {
        String::new()
    } else if let Some(shown) = rest.strip_prefix("# ") {
        format!("{lead}{shown}")
    } else if let Some(escaped) = rest.strip_prefix("##") {
        format!("{lead}#{escaped}")
    } else {
        line.to_owned()
    }
}

/// The line indices of the README's first ```` ```rust ```` fence and of its closing fence.
fn readme_block(readme: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines.iter().position(|l| l.trim_end() == "```rust")?;
    let end = start
        + 1
        + lines[start + 1..]
            .iter()
            .position(|l| l.starts_with("```"))?;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_doc_example_is_found_with_hidden_lines_shown() {
        let lib = "//! Intro.\n//!\n//! ```no_run\n//! # #[tokio::main] async fn main() {\n\
                   //! let x = 1;\n//!     #\n//! ## not hidden\n//! # }\n//! ```\n//!\n\
                   //! ```\n//! second();\n//! ```\n#![forbid(unsafe_code)]\n";
        assert_eq!(
            first_doc_example(lib).unwrap(),
            [
                "#[tokio::main] async fn main() {",
                "let x = 1;",
                "",
                "# not hidden",
                "}"
            ]
        );
        assert_eq!(first_doc_example("//! No example.\nfn main() {}\n"), None);
    }

    #[test]
    fn the_readme_block_is_the_first_rust_fence() {
        let readme = "# x\n\n```sh\nls\n```\n\n```rust\nlet a = 1;\n```\n";
        assert_eq!(readme_block(readme), Some((6, 8)));
    }
}
