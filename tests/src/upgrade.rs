//! Rolling upgrades from the previous release: where its binaries are, which event
//! versions the current release must write while replicas of the previous one still run,
//! and replacing one process of a stack by another binary as an orchestrator does (SIGTERM,
//! its exit, the new process, its readiness).
//!
//! The previous release is the commit named in `PREVIOUS_RELEASE` at the repository's root;
//! `scripts/build-previous-release.sh` builds its services into
//! `target/previous-release/bin/`, with a stamp (`target/previous-release/commit`) naming
//! the commit they were built from.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use events::EventType;

use crate::poll::eventually;
use crate::replicas::Replica;
use crate::sigterm::Exit;
use crate::stack::{STARTUP_DEADLINE, Service, Stack, binary_in, binary_path, profile_dir};

/// What to run when the previous release's binaries are missing or stale.
const BUILD_IT: &str = "run ./scripts/build-previous-release.sh (scripts/test.sh does)";

/// The previous release's service binaries, as built by the script.
#[derive(Debug, Clone)]
pub struct PreviousRelease {
    /// The commit they were built from: the one `PREVIOUS_RELEASE` names.
    pub commit: String,
    /// `target/previous-release/bin`.
    pub dir: PathBuf,
}

impl PreviousRelease {
    /// The binaries next to the current build's `target/` directory (found from the running
    /// test executable, as [`binary_path`] finds the current ones). Panics, saying how to
    /// build them, when they are missing, were built from another commit than the one
    /// `PREVIOUS_RELEASE` names, or are byte for byte the current build's (a test would
    /// then run the current release twice and prove nothing).
    pub fn built() -> PreviousRelease {
        let root = profile_dir()
            .parent()
            .unwrap_or_else(|| panic!("{} has no parent", profile_dir().display()))
            .join("previous-release");
        let stamp = root.join("commit");
        let built = std::fs::read_to_string(&stamp).unwrap_or_else(|e| {
            panic!(
                "the previous release's binaries are not built ({}: {e}): {BUILD_IT}",
                stamp.display()
            )
        });
        let commit = recorded_commit();
        assert_eq!(
            built.trim(),
            commit,
            "{} holds binaries of another commit than PREVIOUS_RELEASE names: {BUILD_IT}",
            root.display()
        );
        let previous = PreviousRelease {
            commit,
            dir: root.join("bin"),
        };
        for s in Service::ALL {
            let old = previous.binary(s);
            let old_bytes = std::fs::read(&old)
                .unwrap_or_else(|e| panic!("{}: {e}: {BUILD_IT}", old.display()));
            let current = binary_path(s.name());
            let current_bytes = std::fs::read(&current)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", current.display()));
            assert!(
                old_bytes != current_bytes,
                "{} is the same file as {}: the previous release's binary was put where the \
                 current build's belongs, or the other way round; build the previous release \
                 first, then the current tree (scripts/test.sh does)",
                old.display(),
                current.display()
            );
        }
        previous
    }

    /// The previous release's binary of `service`.
    pub fn binary(&self, service: Service) -> PathBuf {
        binary_in(&self.dir, service.name())
    }
}

/// The commit `PREVIOUS_RELEASE` names: its one line that is neither blank nor a comment.
pub fn recorded_commit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("PREVIOUS_RELEASE");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_recorded(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_recorded(text: &str) -> Result<String, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match lines[..] {
        [commit] if commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(commit.to_ascii_lowercase())
        }
        [other] => Err(format!("{other:?} is not a full 40-hex commit hash")),
        _ => Err(format!(
            "{} lines that are not comments; exactly one (the commit) expected",
            lines.len()
        )),
    }
}

/// The event types the current release must write at an older version while replicas of
/// the previous release run, with that version: `SAGA_EMIT_VERSIONS` of the new replicas
/// until the producers are switched (docs/upgrading.md, "A new version of an event").
///
/// Each type that reads more than one version is pinned to the oldest it reads. A version
/// is dropped from `older:` only a release after its successor is written (the contract
/// step), so the oldest version the current release reads is one the previous release
/// reads too: written at it, every message is understood by every replica, old or new.
/// (The previous release may write a newer one already; pinning it to the oldest is then
/// more than needed, and still right.)
pub fn pinned_versions() -> Vec<(EventType, u32)> {
    pins_of(&EventType::ALL.map(|t| (t, t.versions())))
}

fn pins_of<T: Copy>(types: &[(T, &[u32])]) -> Vec<(T, u32)> {
    types
        .iter()
        .filter_map(|(t, versions)| match versions {
            [oldest, .., newest] if oldest < newest => Some((*t, *oldest)),
            _ => None,
        })
        .collect()
}

/// `SAGA_EMIT_VERSIONS` for `pins`, as the environment of a process; nothing when there is
/// no pin (every type written at its newest version).
pub fn emit_versions_env(pins: &[(EventType, u32)]) -> Vec<(String, String)> {
    if pins.is_empty() {
        return Vec::new();
    }
    let spec: Vec<String> = pins
        .iter()
        .map(|(t, v)| format!("{}={v}", t.name()))
        .collect();
    vec![(
        messaging::versions::EMIT_VERSIONS_VAR.to_owned(),
        spec.join(","),
    )]
}

/// The services that produce a pinned type, each once, in the order of [`Service::ALL`]
/// (a type the operator publishes has no service to switch).
pub fn producers_of(pins: &[(EventType, u32)]) -> Vec<Service> {
    Service::ALL
        .into_iter()
        .filter(|s| pins.iter().any(|(t, _)| t.producer() == s.name()))
        .collect()
}

/// How long a replaced process gets from its SIGTERM to its exit: the default grace period
/// (`SAGA_SHUTDOWN_GRACE_SECS`, 20 s) and slack for a loaded machine.
pub const EXIT_WITHIN: Duration = Duration::from_secs(30);

impl Stack {
    /// Replaces the stack's own process of `service` as a rolling update does: SIGTERM, its
    /// exit (within [`EXIT_WITHIN`]; it drains), then `binary` with `env` on the same port,
    /// until `/healthz/ready` answers 200. Returns when the signal was sent, and how the old
    /// process ended.
    pub async fn replace_service(
        &self,
        service: Service,
        binary: &Path,
        env: &[(String, String)],
    ) -> (Instant, Exit) {
        let sent = self.sigterm(service);
        let exit = self
            .wait_exit(service, sent, EXIT_WITHIN)
            .await
            .unwrap_or_else(|e| {
                panic!("{service}: {e} (log {})", self.log_path(service).display())
            });
        self.start_service_from(service, binary, env).await;
        wait_ready(&self.base_url(service)).await;
        (sent, exit)
    }

    /// [`Stack::replace_service`] for a replica: the new one takes its place in `replica`
    /// (on a port of its own).
    pub async fn replace_replica(
        &self,
        replica: &mut Replica,
        binary: &Path,
        env: &[(String, String)],
    ) -> (Instant, Exit) {
        let sent = replica.sigterm();
        let exit = replica
            .wait_exit(sent, EXIT_WITHIN)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the {} replica: {e} (log {})",
                    replica.service,
                    replica.log.display()
                )
            });
        let service = replica.service;
        *replica = self.start_replica_from(service, binary, env).await;
        wait_ready(&replica.base_url()).await;
        (sent, exit)
    }
}

/// Waits until `base_url`'s `/healthz/ready` answers 200: what an orchestrator waits for
/// before it replaces the next replica.
async fn wait_ready(base_url: &str) {
    let url = format!("{base_url}/healthz/ready");
    eventually(STARTUP_DEADLINE, || async {
        match reqwest::get(&url).await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(()),
            Ok(r) => Err(format!("{url} answered {}", r.status())),
            Err(e) => Err(format!("{url}: {e}")),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_commit_is_the_one_line_that_is_not_a_comment() {
        let hash = "74dc492afa8ed4ec0e03334dbff7d3377f99c499";
        let text = format!("# the previous release\n\n  # indented comment\n{hash}\n");
        assert_eq!(parse_recorded(&text).unwrap(), hash);
        assert!(parse_recorded("# nothing\n").is_err());
        assert!(parse_recorded("74dc492\n").unwrap_err().contains("40-hex"));
        assert!(parse_recorded(&format!("{hash}\n{hash}\n")).is_err());
    }

    #[test]
    fn a_type_with_an_older_version_is_pinned_to_the_oldest() {
        let types: [(&str, &[u32]); 4] = [
            ("OnlyOne", &[1]),
            ("Added", &[1, 2]),
            ("Kept", &[2, 3]),
            ("Two", &[1, 2, 3]),
        ];
        assert_eq!(pins_of(&types), [("Added", 1), ("Kept", 2), ("Two", 1)]);
    }

    #[test]
    fn the_pins_are_a_spec_the_services_accept() {
        let pins = pinned_versions();
        let env = emit_versions_env(&pins);
        match &env[..] {
            [] => assert!(pins.is_empty()),
            [(name, spec)] => {
                assert_eq!(name, "SAGA_EMIT_VERSIONS");
                let parsed = messaging::versions::parse::<EventType>(spec)
                    .unwrap_or_else(|e| panic!("{spec}: {e}"));
                assert_eq!(parsed.len(), pins.len(), "{spec}");
            }
            more => panic!("one variable expected: {more:?}"),
        }
        for s in producers_of(&pins) {
            assert!(pins.iter().any(|(t, _)| t.producer() == s.name()), "{s}");
        }
    }
}
