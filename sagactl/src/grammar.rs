//! Checks of a command line's grammar (`sagactl`, `saga-bench`), for their tests: clap's
//! own consistency checks, help text for every argument, a description for every command.

/// Every argument of every command, with the path of commands that leads to it.
fn all_args(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Arg)>) {
    for arg in cmd.get_arguments() {
        out.push((path.clone(), arg.clone()));
    }
    for sub in cmd.get_subcommands() {
        all_args(sub, format!("{path} {}", sub.get_name()), out);
    }
}

/// Every command, with the path of commands that leads to it.
fn all_commands(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
    for sub in cmd.get_subcommands() {
        let sub_path = format!("{path} {}", sub.get_name());
        out.push((sub_path.clone(), sub.clone()));
        all_commands(sub, sub_path, out);
    }
}

/// Panics, naming what is wrong, when `cli` breaks clap's own rules, an argument of any
/// command has no help text, or a command does not say what it does; answers how many
/// commands it checked.
pub fn assert_documented(mut cli: clap::Command) -> usize {
    cli.clone().debug_assert();
    let name = cli.get_name().to_owned();
    let mut args = Vec::new();
    all_args(&cli, name.clone(), &mut args);
    let undocumented: Vec<String> = args
        .iter()
        .filter(|(_, a)| !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|(_, a)| a.get_help().is_none() && a.get_long_help().is_none())
        .map(|(path, a)| format!("{path}: {}", a.get_id()))
        .collect();
    assert!(undocumented.is_empty(), "no help text: {undocumented:?}");
    cli.build();
    let mut commands = Vec::new();
    all_commands(&cli, name, &mut commands);
    for (path, cmd) in &mut commands {
        if cmd.get_name() == "help" {
            continue;
        }
        let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
        assert!(!about.trim().is_empty(), "{path} has no description");
        let help = cmd.render_long_help().to_string();
        assert!(help.contains("Usage:"), "{path}: {help}");
    }
    commands.len()
}
