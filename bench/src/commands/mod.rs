//! One module per command, behind one dispatch.

mod bench;
mod bench_path;
mod load;
mod preload;

use sagactl::context::Context;

use crate::cli::Command;

pub(crate) async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Load(args) => load::run(ctx, args).await,
        Command::Bench(args) => bench::run(ctx, args).await,
        Command::BenchPath(args) => bench_path::run(ctx, args).await,
    }
}
