//! The `confgate` binary.

use clap::Parser;
use confgate::cli::{Cli, Command};
use std::process::ExitCode;

/// Reviews are parsed into, and freed from, many small allocations: mimalloc makes the whole
/// request about a third cheaper than the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    confgate::telemetry::mark_process_start();
    let cli = Cli::parse();
    match cli.command {
        Command::Review(args) => confgate::cli::review::run(args),
        Command::Test(args) => confgate::cli::policy_test::run(args),
        Command::Audit(args) => confgate::cli::audit::run(args),
        Command::Certs(args) => report(confgate::cli::certs::run(args)),
        Command::Webhooks(args) => report(confgate::cli::webhooks::run(args)),
        Command::Release(args) => confgate::cli::release::run(args),
        Command::Serve(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => return report(Err(e.into())),
            };
            report(runtime.block_on(confgate::cli::serve::run(*args)))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("confgate: {error:#}");
            ExitCode::from(2)
        }
    }
}
