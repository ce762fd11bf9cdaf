//! Printing results: text for people (`-o table`, the default), one JSON document
//! (`-o json`, `--json`) or one JSON object per line for lists (`-o jsonl`); colour only
//! where `--color` and `NO_COLOR` allow it; errors, and the exit status they give.
//! Everything goes through [`line`], so a reader that closes the pipe early
//! (`sagactl … | head`) ends the command quietly.

use std::io::{IsTerminal, Write};

use serde_json::Value;

use crate::context::{Context, Failure};
use crate::options::OutputFormat;

/// Writes `text` and a newline to standard output. When the reader has gone (a closed
/// pipe) there is nobody left to tell, so the process ends at once with status 0.
pub fn line(text: &str) {
    write_out(format!("{text}\n").as_bytes());
}

/// Writes bytes to standard output as they are, ending quietly on a closed pipe.
pub fn write_out(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

pub fn json(value: &Value) {
    // `{:#}` is serde_json's pretty form, and cannot fail for a `Value`.
    line(&format!("{value:#}"));
}

/// Prints `value` as JSON with `-o json` (one compact line with `-o jsonl`), else the text
/// `human` renders.
pub fn show(ctx: &Context, value: &Value, human: impl FnOnce(&Value) -> String) {
    match ctx.format {
        OutputFormat::Table => line(&human(value)),
        OutputFormat::Json => json(value),
        OutputFormat::Jsonl => line(&value.to_string()),
    }
}

/// Like [`show`] for a result that is a list under `key`: with `-o jsonl` each entry of
/// the list is one line.
pub fn list(ctx: &Context, value: &Value, key: &str, human: impl FnOnce(&Value) -> String) {
    if ctx.format == OutputFormat::Jsonl {
        for entry in value[key].as_array().into_iter().flatten() {
            line(&entry.to_string());
        }
    } else {
        show(ctx, value, human);
    }
}

/// Asks `question` on the terminal before a change that cannot be undone, and succeeds on
/// a yes. Without a terminal to ask on it refuses, so a script must say `--yes`; the
/// refusals start with `refusal` ("not purging order-svc.dlq").
pub fn confirm(question: &str, refusal: &str) -> anyhow::Result<()> {
    use crate::context::CliError;
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Refused(format!(
            "{refusal}: standard input is not a terminal to confirm on; add --yes"
        ))
        .into());
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(CliError::Refused(format!("{refusal}: not confirmed")).into())
    }
}

/// Whether colours go to a stream: `--color always|never`, or on `auto` a terminal without
/// `NO_COLOR` set to a non-empty value (<https://no-color.org>).
pub fn use_color(choice: clap::ColorChoice, is_terminal: bool) -> bool {
    match choice {
        clap::ColorChoice::Always => true,
        clap::ColorChoice::Never => false,
        clap::ColorChoice::Auto => {
            is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

/// `text` in an ANSI colour (`31` red, `32` green) when the output is coloured.
pub fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

fn error(ctx: &Context, e: &anyhow::Error, failure: Failure) {
    if ctx.json {
        let kind = match failure {
            Failure::Refused => "refused",
            Failure::Unreachable => "unreachable",
        };
        eprintln!(
            "{}",
            serde_json::json!({"error": kind, "message": format!("{e:#}")})
        );
    } else {
        let color = use_color(ctx.color, std::io::stderr().is_terminal());
        eprintln!("{} {e:#}", paint(color, "31", "error:"));
    }
}

/// How a command ended, as its exit status: 0 when it succeeded, else the error printed
/// (as JSON with `-o json`) and the status its kind gives (1 refused, 3 unreachable).
pub fn exit_code(ctx: &Context, result: anyhow::Result<()>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            let failure = Failure::classify(&e);
            error(ctx, &e, failure);
            failure.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_follows_the_choice_and_the_terminal() {
        assert!(use_color(clap::ColorChoice::Always, false));
        assert!(!use_color(clap::ColorChoice::Never, true));
        assert!(!use_color(clap::ColorChoice::Auto, false));
        assert_eq!(paint(false, "31", "x"), "x");
        assert_eq!(paint(true, "31", "x"), "\x1b[31mx\x1b[0m");
    }
}
