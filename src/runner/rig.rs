//! The traffic side of one run: the recorder, the cohort proxy at the
//! edge and its sidecars, the load generator and the `/metrics`
//! endpoint. Started after preflight, stopped after the faults were
//! reverted; it injects nothing (HTTP faults are pushed in by the
//! observe loop from the schedule).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::schedule::Schedule;
use super::{plan, RunError, RunOptions};
use crate::experiment::Experiment;
use crate::metrics::platform::{MetricsServer, PlatformMetrics};
use crate::metrics::Recorder;
use crate::traffic::{Proxy, ProxyHandle};

/// Raw latency samples kept per cohort (bounded memory).
const RESERVOIR: usize = 200_000;

type LoadTask =
    tokio::task::JoinHandle<Result<crate::load::LoadStats, crate::load::LoadError>>;

/// The running proxies and load of a run.
pub struct Rig {
    /// Every request of both cohorts.
    pub recorder: Arc<Recorder>,
    /// The platform's own metrics.
    pub platform: PlatformMetrics,
    /// The cohort proxy.
    pub edge: ProxyHandle,
    /// Sidecar proxies, by name.
    pub sidecars: Vec<(String, ProxyHandle)>,
    stop_load: watch::Sender<bool>,
    load_task: Option<LoadTask>,
    _metrics_server: Option<MetricsServer>,
}

/// The load generator's config for `[load]`, aimed at `proxy`. Checked at
/// preflight (with the configured listen address) so a config the
/// generator refuses fails the run before anything is injected instead of
/// silently producing no traffic.
pub fn load_config(
    exp: &Experiment,
    l: &crate::experiment::Load,
    proxy: SocketAddr,
    seed: u64,
) -> Result<crate::load::LoadConfig, RunError> {
    let target = format!("http://{proxy}{}", l.path);
    let cfg = crate::load::LoadConfig {
        target: target.parse().map_err(|e| {
            crate::load::LoadError::Config(format!("target {target:?}: {e}"))
        })?,
        max_requests: None,
        rate_per_s: l.rate,
        concurrency: l.concurrency,
        key_header: l.key_header.clone(),
        key_space: l.keys,
        key_zipf: l.key_zipf,
        seed,
        timeout: l
            .timeout
            .unwrap_or(exp.traffic.upstream_timeout + Duration::from_secs(1)),
    };
    crate::load::check(&cfg)?;
    Ok(cfg)
}

/// A load task that failed (or panicked) instead of running to the stop
/// signal: the run had no traffic it was promised, an environment error.
pub(super) fn load_failure(
    joined: Result<
        Result<
            Result<crate::load::LoadStats, crate::load::LoadError>,
            tokio::task::JoinError,
        >,
        tokio::time::error::Elapsed,
    >,
) -> Option<String> {
    match joined {
        Ok(Ok(Ok(_))) | Err(_) => None,
        Ok(Ok(Err(e))) => Some(format!("load generator failed: {e}")),
        Ok(Err(e)) => Some(format!("load generator crashed: {e}")),
    }
}

impl Rig {
    /// Starts the metrics endpoint, the proxies and the load; on any
    /// failure whatever already started is stopped again.
    pub async fn start(
        exp: &Experiment,
        opts: &RunOptions,
        seed: u64,
    ) -> Result<Rig, RunError> {
        let recorder = Arc::new(Recorder::new(tokio::time::Instant::now(), RESERVOIR));
        let platform = PlatformMetrics::new();
        let metrics_server = match opts.metrics_listen {
            Some(addr) => {
                let mut registry = prometheus_client::registry::Registry::default();
                platform.register(&mut registry);
                let sources: Vec<Arc<dyn crate::metrics::platform::HasRegistry>> =
                    vec![Arc::new(registry), recorder.clone()];
                Some(
                    crate::metrics::platform::serve_registries(addr, sources)
                        .await
                        .map_err(|e| RunError::Preflight(e.to_string()))?,
                )
            }
            None => None,
        };
        let edge = Proxy::start(plan::edge_proxy(exp, seed)?, recorder.clone())
            .await
            .map_err(|e| RunError::Preflight(format!("cohort proxy: {e}")))?;
        let mut sidecars: Vec<(String, ProxyHandle)> = Vec::new();
        for (name, cfg) in plan::sidecars(exp, seed)? {
            let rec = Arc::new(Recorder::new(tokio::time::Instant::now(), 1_000));
            match Proxy::start(cfg, rec).await {
                Ok(h) => sidecars.push((name, h)),
                Err(e) => {
                    shutdown(edge, sidecars).await;
                    return Err(RunError::Preflight(format!("sidecar {name}: {e}")));
                }
            }
        }
        let (stop_load, stop_rx) = watch::channel(false);
        let max_load = exp.meta.baseline + exp.meta.duration + Duration::from_secs(5);
        let load_task = match &exp.load {
            // Checked at preflight with the configured address; the bound
            // one differs only by port, so this cannot fail differently.
            Some(l) => match load_config(exp, l, edge.local_addr(), seed) {
                Ok(cfg) => Some(tokio::spawn(crate::load::run(cfg, stop_rx, max_load))),
                Err(e) => {
                    shutdown(edge, sidecars).await;
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(Rig {
            recorder,
            platform,
            edge,
            sidecars,
            stop_load,
            load_task,
            _metrics_server: metrics_server,
        })
    }

    /// Gives each proxy the HTTP faults of `schedule` active at it.
    pub fn push_http_faults(&self, schedule: &Schedule) {
        self.edge.set_faults(schedule.active_http("edge"));
        for (name, h) in &self.sidecars {
            h.set_faults(schedule.active_http(name));
        }
    }

    /// Clears every proxy's faults, whatever the bookkeeping says.
    pub fn clear_http_faults(&self) {
        self.edge.set_faults(Vec::new());
        for (_, h) in &self.sidecars {
            h.set_faults(Vec::new());
        }
    }

    /// Stops the load generator; its failure, if it failed.
    pub async fn stop_load(&mut self) -> Option<String> {
        let _ = self.stop_load.send(true);
        let t = self.load_task.take()?;
        load_failure(tokio::time::timeout(Duration::from_secs(3), t).await)
    }

    /// Shuts the proxies down (the recorder stays readable). Returns the
    /// `/metrics` server, to be kept until the run's final metrics are
    /// recorded.
    pub async fn shutdown(self) -> Option<MetricsServer> {
        shutdown(self.edge, self.sidecars).await;
        self._metrics_server
    }
}

async fn shutdown(edge: ProxyHandle, sidecars: Vec<(String, ProxyHandle)>) {
    edge.shutdown().await;
    for (_, s) in sidecars {
        s.shutdown().await;
    }
}
