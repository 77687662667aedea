//! End-to-end tests with real processes, sockets and namespaces, built as
//! one binary of modules (one link step instead of one per file).

mod analyze;
mod baggage;
mod daemon;
mod dashboards;
mod demo;
mod faults;
mod fleet;
mod fleet_agent;
mod fleet_daemon;
mod fleet_gameday;
mod fleet_schedule;
mod fleet_support;
mod gameday;
mod halt;
mod hostile;
mod k8s;
mod k8s_support;
mod keys;
mod kill_matrix;
mod netns;
mod otel;
mod prometheus;
mod proxy;
mod proxy_edge;
mod recovery;
mod report;
mod run;
mod shell;
mod support;
mod tls;
mod validate;
