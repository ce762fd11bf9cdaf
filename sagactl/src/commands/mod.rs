//! One module per command family, behind one dispatch.

mod audit;
mod dlq;
mod find;
mod keys;
mod order;
mod publish;
mod queues;
mod scenario;
mod stock;
mod stuck;
mod tail;
mod trace;
mod ui;
mod verify;
mod wallet;

use clap::CommandFactory;

use crate::cli::{Cli, Command, ScenarioCommand};
use sagactl::context::Context;
use sagactl::verify::Expected;

pub(crate) async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Publish(args) => publish::run(ctx, args).await,
        Command::Order(cmd) => order::run(ctx, cmd).await,
        Command::Stock(cmd) => stock::run(ctx, cmd).await,
        Command::Wallet(cmd) => wallet::run(ctx, cmd).await,
        Command::Tail(args) => tail::run(ctx, args).await,
        Command::Trace { order_id } => trace::run(ctx, order_id).await,
        Command::Queues { watch } => queues::run(ctx, watch).await,
        Command::Dlq(cmd) => dlq::run(ctx, cmd).await,
        Command::Audit(args) => audit::run(ctx, args).await,
        Command::Stuck(cmd) => stuck::run(ctx, cmd).await,
        Command::Find(args) => find::run(ctx, args).await,
        Command::Scenario(ScenarioCommand::Run { paths }) => scenario::run(ctx, paths).await,
        Command::Verify {
            settle,
            expect_stock,
            expect_deposits,
        } => {
            let expected = Expected {
                stock: expect_stock.into_iter().collect(),
                deposits: expect_deposits.into_iter().collect(),
            };
            verify::run(ctx, settle, &expected).await
        }
        Command::Ui { listen } => ui::run(ctx, listen).await,
        Command::Token(args) => keys::print_token(&ctx.identity, &args),
        Command::DevKeys(args) => keys::create_dev_keys(&args),
        Command::Completions { shell } => {
            // Written in one piece through the output module, so `| head` ends quietly.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sagactl", &mut script);
            sagactl::output::write_out(&script);
            Ok(())
        }
    }
}
