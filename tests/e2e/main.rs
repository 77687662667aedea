//! End-to-end tests with real processes, sockets and namespaces, built as
//! one binary of modules (one link step instead of one per file).

mod daemon;
mod support;
mod validate;
