//! Stopping a service process as an orchestrator does: SIGTERM, then waiting for it to
//! exit within a bound, and how long that took (its drain). The wait polls: a process that
//! has not exited when the bound passes is killed, and the wait fails.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::poll::{Poll, until};
use crate::replicas::Replica;
use crate::stack::{Service, Stack};

/// How a process ended after SIGTERM.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: ExitStatus,
    /// From the signal to the exit.
    pub after: Duration,
}

fn send_sigterm(child: &Child) -> Instant {
    let pid = libc::pid_t::try_from(child.id()).expect("a process id fits a pid_t");
    // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(
        sent,
        0,
        "SIGTERM to {pid}: {}",
        std::io::Error::last_os_error()
    );
    Instant::now()
}

/// One look at a process signalled at `since`: its exit status once it has exited.
fn exited(child: &mut Child, since: Instant) -> Poll<ExitStatus> {
    match child.try_wait() {
        Ok(Some(status)) => Poll::Ready(status),
        Ok(None) => Poll::Pending(format!("still running {:?} after SIGTERM", since.elapsed())),
        Err(e) => Poll::Failed(format!("its status cannot be read: {e}")),
    }
}

/// Looks until the process exits, at most `within` after `since` (its SIGTERM).
async fn wait_for_exit(
    mut look: impl FnMut() -> Poll<ExitStatus>,
    since: Instant,
    within: Duration,
) -> Result<Exit, String> {
    let left = within.saturating_sub(since.elapsed());
    let status = until(left, || {
        let seen = look();
        async move { seen }
    })
    .await
    .map_err(|last| format!("did not exit within {within:?} of SIGTERM: {last}"))?;
    Ok(Exit {
        status,
        after: since.elapsed(),
    })
}

impl Replica {
    /// Sends SIGTERM; returns when it was sent.
    pub fn sigterm(&self) -> Instant {
        send_sigterm(&self.child)
    }

    /// Waits until the replica exits, at most `within` after `since` (its SIGTERM). A
    /// replica still running then is killed when dropped.
    pub async fn wait_exit(&mut self, since: Instant, within: Duration) -> Result<Exit, String> {
        let child = &mut self.child;
        wait_for_exit(|| exited(child, since), since, within).await
    }
}

impl Stack {
    /// Sends SIGTERM to `service`; returns when it was sent.
    pub fn sigterm(&self, service: Service) -> Instant {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let child = children
            .get(&service)
            .unwrap_or_else(|| panic!("{service} is not running"));
        send_sigterm(child)
    }

    /// Waits until `service` exits, at most `within` after `since` (its SIGTERM), and kills
    /// it if it is still running then. The stack holds no process for it afterwards
    /// ([`Stack::start_service`] starts it again).
    pub async fn wait_exit(
        &self,
        service: Service,
        since: Instant,
        within: Duration,
    ) -> Result<Exit, String> {
        let exit = wait_for_exit(
            || {
                let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                match children.get_mut(&service) {
                    Some(child) => exited(child, since),
                    None => Poll::Failed(format!("{service} is not running")),
                }
            },
            since,
            within,
        )
        .await;
        self.kill(service);
        exit
    }
}
