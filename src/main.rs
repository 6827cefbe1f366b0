//! The `itrelay` command line ([`itrelay::cli`]).

use std::process::ExitCode;

/// jemalloc: draining a backlog, the relay used a third less CPU than with glibc's
/// malloc, at the same resident size.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start (`_RJEM_MALLOC_CONF` in the environment adds to
/// them): freed pages go back to the system within a second instead of jemalloc's ten, so
/// the relay's resident size follows what it holds under load. In `cargo bench --bench
/// e2e` the peak fell from 28.4–33.0 MB to 27.4–27.7 MB (two runs each) at the same CPU
/// per event (bench/results/history.md).
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    itrelay::cli::main()
}
