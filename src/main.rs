//! The `chaos` binary: everything lives in the library so tests can call it.

/// mimalloc instead of glibc's allocator: the proxy allocates per request
/// (HTTP/2 stream tasks, header maps), and glibc's free-list work showed up
/// as a tenth of the HTTP/2 path's CPU profile (docs/proxy.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    chaos::cli::main()
}
