//! The compatibility gate: what this tree changes against the previous release, the commit
//! named in `PREVIOUS_RELEASE` whose binaries run beside this release's during a rolling
//! upgrade.
//!
//! - [`schemas`]: the JSON Schema of every (event type, version) the previous release
//!   published against the one this code derives; any change an old reader or writer
//!   cannot take is a break, named by event, version and field.
//! - [`migrations`]: the previous release's migration files must be unchanged, and a new
//!   migration must not drop, rename or tighten what the old binaries use unless it is
//!   declared the contract step of an expand that shipped in an earlier release.
//!
//! Both are pure functions of the two sides' contents; [`PreviousRelease`] reads the old
//! side out of git, and `tests/tests/checks/compat.rs` runs them on the real tree.

pub mod migrations;
pub mod schemas;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file at the repository root that names the previous release.
pub const PREVIOUS_RELEASE_FILE: &str = "PREVIOUS_RELEASE";

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The commit `PREVIOUS_RELEASE` names: its one line that is not blank and not a `#`
/// comment, which must be 40 hex digits.
pub fn parse_previous_release(text: &str) -> Result<String, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match lines.as_slice() {
        [commit] if commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()) => {
            Ok(commit.to_ascii_lowercase())
        }
        [other] => Err(format!(
            "{PREVIOUS_RELEASE_FILE}: `{other}` is not a 40-hex-digit commit"
        )),
        _ => Err(format!(
            "{PREVIOUS_RELEASE_FILE}: expected one line with a commit besides the `#` \
             comments, found {}",
            lines.len()
        )),
    }
}

/// The previous release's tree, read from git.
#[derive(Debug, Clone)]
pub struct PreviousRelease {
    root: PathBuf,
    pub commit: String,
}

impl PreviousRelease {
    /// The commit `PREVIOUS_RELEASE` under `root` names, which must be in the clone.
    pub fn open(root: &Path) -> Result<Self, String> {
        let path = root.join(PREVIOUS_RELEASE_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let release = PreviousRelease {
            root: root.to_owned(),
            commit: parse_previous_release(&text)?,
        };
        let object = format!("{}^{{commit}}", release.commit);
        if release.git(&["cat-file", "-e", &object]).is_err() {
            return Err(format!(
                "the previous release {commit} (named in {PREVIOUS_RELEASE_FILE}) is not in \
                 this clone; fetch it with `git fetch origin {commit}` (a shallow clone needs \
                 the history back to it) and run again",
                commit = release.commit
            ));
        }
        Ok(release)
    }

    fn git(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new("git")
            .args(args)
            .current_dir(&self.root)
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        String::from_utf8(output.stdout).map_err(|e| format!("git {}: {e}", args.join(" ")))
    }

    /// The paths of every file of the release, or of those under `dir` when given.
    pub fn files(&self, dir: Option<&str>) -> Result<Vec<String>, String> {
        let mut args = vec!["ls-tree", "-r", "--name-only", &self.commit];
        if let Some(dir) = dir {
            args.extend(["--", dir]);
        }
        Ok(self.git(&args)?.lines().map(str::to_owned).collect())
    }

    /// The content of `path` in the release.
    pub fn read(&self, path: &str) -> Result<String, String> {
        self.git(&["show", &format!("{}:{path}", self.commit)])
    }

    /// The content of every file of the release whose path passes `keep`, by path.
    pub fn read_all(
        &self,
        dir: Option<&str>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, String>, String> {
        self.files(dir)?
            .into_iter()
            .filter(|p| keep(p))
            .map(|p| self.read(&p).map(|text| (p, text)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "74dc492afa8ed4ec0e03334dbff7d3377f99c499";

    #[test]
    fn the_commit_is_the_one_line_that_is_not_a_comment() {
        let text = format!("# the previous release\n#\n\n{COMMIT}\n");
        assert_eq!(parse_previous_release(&text).unwrap(), COMMIT);
    }

    #[test]
    fn anything_but_one_commit_is_refused() {
        assert!(parse_previous_release("# nothing\n").is_err());
        assert!(
            parse_previous_release("v1.2.0\n")
                .unwrap_err()
                .contains("v1.2.0")
        );
        assert!(parse_previous_release(&format!("{COMMIT}\n{COMMIT}\n")).is_err());
    }
}
