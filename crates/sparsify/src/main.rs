//! The `sparsify` binary: see the `sparsify` library crate for the commands.

/// Counts allocations so `sparsify bench` can report peak extra memory.
#[global_allocator]
static ALLOC: sparsify::alloc::CountingAlloc = sparsify::alloc::CountingAlloc;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(sparsify::main_with(std::env::args_os()))
}
