//! `peroxo bench`: a load generator for a running node.
//!
//! (Scenarios are being built: idle, dm, connect.)

use clap::Args;

/// The arguments of `peroxo bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The node's base WebSocket URL, e.g. ws://127.0.0.1:8080/ws.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
}

/// Runs the benchmark described by `args` and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("no scenario implemented yet for {}", args.url)
}
