//! Refuses binaries older than what they are built from, so that an end-to-end test never passes or
//! fails on yesterday's code.
//!
//! What a binary is built from is what cargo itself watches: the dep-info file it writes beside the
//! binary (`target/debug/ordersvc.d`) lists every file rustc read for it and every file a build
//! script asked to watch: the crate's own sources, those of `crates/pipeline-runtime`, `crates/order-domain` and
//! `proto` (with `eventstore.proto`), the migrations. Cargo rebuilds a binary when one of them is
//! newer than the build, so "older than one of them" is exactly "`cargo build --bins` would rebuild
//! it", and the build always clears the refusal.
//!
//! Not compared: `Cargo.lock` and the manifests. Cargo does not rebuild a binary whose own
//! dependencies did not change, so a lockfile touched for another crate (a dev-dependency added
//! elsewhere) would leave every binary "older" for good, a refusal no build clears.
//!
//! Refusing rather than building: a test that runs cargo would wait on the target folder's lock
//! while another cargo holds it, rebuild with flags other than the developer's, and spend minutes of
//! a two-core machine inside a test's time limit; `scripts/test` builds the binaries first anyway.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// An error naming each of `binaries` that is older than a file it is built from (or whose
/// dep-info is missing), with the command that rebuilds them.
pub fn refuse_stale(binaries: &[PathBuf]) -> anyhow::Result<()> {
    let stale: Vec<String> = binaries.iter().filter_map(|b| staleness(b)).collect();
    anyhow::ensure!(
        stale.is_empty(),
        "{}; run cargo build --workspace --bins",
        stale.join("; ")
    );
    Ok(())
}

/// Why `binary` is stale, if it is.
pub fn staleness(binary: &Path) -> Option<String> {
    let built = match modified(binary) {
        Ok(built) => built,
        Err(err) => return Some(format!("{}: {err}", shown(binary))),
    };
    let mut dep_info = binary.as_os_str().to_owned();
    dep_info.push(".d");
    let dep_info = PathBuf::from(dep_info);
    let listing = match std::fs::read_to_string(&dep_info) {
        Ok(listing) => listing,
        Err(err) => {
            return Some(format!(
                "{} has no dep-info {} ({err}), so what it was built from is unknown",
                shown(binary),
                shown(&dep_info)
            ));
        }
    };
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for source in dep_info_sources(&listing) {
        match modified(&source) {
            // Cargo rebuilds when a file it watches is gone.
            Err(_) => {
                return Some(format!(
                    "{} was built from {}, which is gone",
                    shown(binary),
                    shown(&source)
                ));
            }
            Ok(at) if at > built && newest.as_ref().is_none_or(|(t, _)| at > *t) => {
                newest = Some((at, source));
            }
            Ok(_) => {}
        }
    }
    newest.map(|(_, source)| format!("{} is older than {}", shown(binary), shown(&source)))
}

fn modified(path: &Path) -> std::io::Result<SystemTime> {
    std::fs::metadata(path)?.modified()
}

/// The prerequisites of the first rule of a Makefile-style dep-info file, as cargo writes it:
/// `target: a b c`, with spaces in names escaped by a backslash.
fn dep_info_sources(listing: &str) -> Vec<PathBuf> {
    let Some(rule) = listing.lines().find(|line| !line.trim().is_empty()) else {
        return Vec::new();
    };
    // The target may contain escaped spaces and, on Windows, a drive's colon: split at ": ".
    let Some((_, prerequisites)) = rule.split_once(": ") else {
        return Vec::new();
    };
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = prerequisites.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                current.push(' ');
                chars.next();
            }
            ' ' => {
                if !current.is_empty() {
                    sources.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        sources.push(PathBuf::from(current));
    }
    sources
}

/// `path` relative to the workspace when it lies inside it.
fn shown(path: &Path) -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2);
    workspace
        .and_then(|root| path.strip_prefix(root).ok())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sources_of_a_dep_info_file_are_its_first_rules_prerequisites() {
        let listing = "/w/target/debug/ordersvc: /w/ordersvc/src/main.rs /w/my\\ dir/lib.rs  /w/proto/eventstore.proto\n\n/w/ordersvc/src/main.rs:\n";
        assert_eq!(
            dep_info_sources(listing),
            [
                PathBuf::from("/w/ordersvc/src/main.rs"),
                PathBuf::from("/w/my dir/lib.rs"),
                PathBuf::from("/w/proto/eventstore.proto"),
            ]
        );
        assert!(dep_info_sources("").is_empty());
    }

    #[test]
    fn a_binary_older_than_a_source_is_stale_and_a_rebuilt_one_is_not() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let source = dir.path().join("main.rs");
        let binary = dir.path().join("service");
        std::fs::write(&source, "fn main() {}").expect("source");
        std::fs::write(&binary, "binary").expect("binary");
        std::fs::write(
            dir.path().join("service.d"),
            format!("{}: {}\n", binary.display(), source.display()),
        )
        .expect("dep-info");
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let set = |path: &Path, time| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(time))
                .expect("mtime set");
        };
        set(&source, at(2_000_000_000));
        set(&binary, at(1_000_000_000));
        let why = staleness(&binary).expect("stale");
        assert!(
            why.contains("is older than") && why.contains("main.rs"),
            "{why}"
        );
        set(&binary, at(2_000_000_001));
        assert_eq!(staleness(&binary), None);
        std::fs::remove_file(&source).expect("removed");
        assert!(staleness(&binary).is_some_and(|why| why.contains("gone")));
        std::fs::remove_file(dir.path().join("service.d")).expect("removed");
        assert!(staleness(&binary).is_some_and(|why| why.contains("dep-info")));
    }
}
