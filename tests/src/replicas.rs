//! More instances of a service on one stack: the same broker vhost and database, an HTTP
//! port of their own. Replicas compete for their service's queue and share its outbox, as
//! they would behind a load balancer in production.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::poll::{Poll, until};
use crate::prometheus;
use crate::stack::{Service, Stack, free_port};

/// One extra running instance; killed when dropped.
pub struct Replica {
    pub service: Service,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub(crate) child: Child,
}

impl Replica {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The sum of a metric on this replica's `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base_url()))
            .await
            .and_then(|r| r.error_for_status())
            .expect("replica /metrics")
            .text()
            .await
            .expect("metrics text");
        prometheus::sum(&prometheus::parse(&text), name, labels)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Stack {
    /// One more instance of each service, started one after the other (each healthy before
    /// the next starts), in the order of [`Service::ALL`].
    pub async fn start_replica_of_each(&self) -> Vec<Replica> {
        let mut replicas = Vec::new();
        for s in Service::ALL {
            replicas.push(self.start_replica(s).await);
        }
        replicas
    }

    /// Starts one more instance of `service` and waits until its `/healthz` is 200.
    pub async fn start_replica(&self, service: Service) -> Replica {
        self.start_replica_from(service, &self.binary(service), &[])
            .await
    }

    /// Starts one more instance of `service` from `binary` (another release's, say), with
    /// `env` on top of the stack's own, and waits until its `/healthz` is 200.
    pub async fn start_replica_from(
        &self,
        service: Service,
        binary: &Path,
        env: &[(String, String)],
    ) -> Replica {
        let addr = free_port();
        let log = self
            .log_path(service)
            .with_extension(format!("replica-{}.log", addr.port()));
        let file = std::fs::File::create(&log).expect("replica log file");
        let mut all = vec![(
            format!("SAGA_{}_HTTP_ADDR", service.env_prefix()),
            addr.to_string(),
        )];
        all.extend_from_slice(env);
        let child = self
            .service_command(binary, &all, file)
            .spawn()
            .unwrap_or_else(|e| panic!("the replica ({}) does not start: {e}", binary.display()));
        let replica = Replica {
            service,
            addr,
            log,
            child,
        };
        let url = format!("{}/healthz", replica.base_url());
        let healthy = until(Duration::from_secs(60), || {
            let url = url.clone();
            async move {
                match reqwest::get(&url).await {
                    Ok(r) if r.status().is_success() => Poll::Ready(()),
                    Ok(r) => Poll::Pending(format!("/healthz answered {}", r.status())),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            }
        })
        .await;
        if let Err(last) = healthy {
            panic!(
                "replica of {service} did not become healthy: {last} (log {})",
                replica.log.display()
            );
        }
        replica
    }
}
