//! `lb-bench-client`: one traffic measurement of the benchmarks, as a process of the client pod
//! (`lb_tests::bench::client::Client` starts it inside the pod's namespace, and in a cgroup for
//! socket-level translation). Prints the result as one JSON line: `{"Ok": run}` or
//! `{"Err": "what failed"}`.

use std::{net::SocketAddrV4, time::Duration};

use anyhow::Context;
use clap::Parser;
use lb_tests::bench::client::{self, Workload};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "lb-bench-client",
    about = "One traffic measurement of lb-bench"
)]
struct Cli {
    #[arg(value_enum)]
    workload: Workload,
    /// Where to connect (a Service's address, or a pod's).
    target: SocketAddrV4,
    /// How long to measure, in milliseconds.
    window_ms: u64,
    /// At most this many connections or transactions.
    max: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let window = Duration::from_millis(cli.window_ms);
    let line = match cli.workload {
        Workload::Connections => json(Ok(client::connection_loop(cli.target, window, cli.max))),
        Workload::Stream => json(client::stream(cli.target, window)),
        Workload::RequestResponse => json(client::request_response(cli.target, window, cli.max)),
    }?;
    println!("{line}");
    Ok(())
}

fn json<T: Serialize>(run: std::io::Result<T>) -> anyhow::Result<String> {
    serde_json::to_string(&run.map_err(|e| e.to_string())).context("encoding the result")
}
