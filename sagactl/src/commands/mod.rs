//! One module per command family, behind one dispatch.

mod bench;
mod bus;
mod dlq;
mod load;
mod order;
mod preload;
mod publish;
mod queues;
mod scenario;
mod stock;
mod tail;
mod trace;
mod verify;
mod wallet;

use clap::CommandFactory;

use crate::cli::{Cli, Command, ScenarioCommand};
use crate::context::Context;

pub use load::Mix;
pub use publish::publish_event;

pub fn load_mix(s: &str) -> Result<Mix, String> {
    Mix::parse(s)
}

pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Publish(args) => publish::run(ctx, args).await,
        Command::Order(cmd) => order::run(ctx, cmd).await,
        Command::Stock(cmd) => stock::run(ctx, cmd).await,
        Command::Wallet(cmd) => wallet::run(ctx, cmd).await,
        Command::Tail(args) => tail::run(ctx, args).await,
        Command::Trace { order_id } => trace::run(ctx, order_id).await,
        Command::Queues { watch } => queues::run(ctx, watch).await,
        Command::Dlq(cmd) => dlq::run(ctx, cmd).await,
        Command::Scenario(ScenarioCommand::Run { paths }) => scenario::run(ctx, paths).await,
        Command::Load(args) => load::run(ctx, args).await,
        Command::Bench(args) => bench::run(ctx, args).await,
        Command::Verify { settle } => verify::run(ctx, settle).await,
        Command::Token(args) => crate::identity::print_token(&ctx.identity, &args),
        Command::DevKeys(args) => crate::identity::create_dev_keys(&args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "sagactl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}
