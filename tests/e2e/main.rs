//! End-to-end tests with real processes, sockets and namespaces, built as
//! one binary of modules (one link step instead of one per file).

mod analyze;
mod daemon;
mod dashboards;
mod demo;
mod faults;
mod gameday;
mod hostile;
mod netns;
mod prometheus;
mod proxy;
mod proxy_edge;
mod report;
mod run;
mod support;
mod validate;
