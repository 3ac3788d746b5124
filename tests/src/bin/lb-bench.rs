//! `lb-bench`: runs the benchmarks and writes results.md, results.json and the plots. Started
//! by `cargo xtask bench`, which builds it and the `lb-agent` next to it in release mode.

use anyhow::{ensure, Context};
use clap::Parser;
use lb_tests::bench::{self, interrupt, options::BenchOptions, report, targets};

#[derive(Parser)]
#[command(
    name = "lb-bench",
    about = "Benchmarks the eBPF data path against kube-proxy-style iptables and nftables rules"
)]
struct Cli {
    #[command(flatten)]
    options: BenchOptions,
}

fn main() -> anyhow::Result<()> {
    let options = Cli::parse().options;
    ensure!(
        lb_tests::root::is_root(),
        "lb-bench needs root: it creates network namespaces and loads BPF programs"
    );
    interrupt::install();
    let plan = options.plan();
    let command = format!("cargo xtask bench {}", options.to_args().join(" "));
    let results = bench::run(&plan, &command).context("benchmark failed")?;
    let written = report::write(&options.out, &results).context("writing the results")?;
    println!("{}", targets::section(&results));
    println!("{}", report::headline(&results));
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
