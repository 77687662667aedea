//! `chaos completions SHELL`: the shell completion script, generated from
//! the clap definitions (so it can never drift from the real flags).

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::exit;

/// Help text shown after the options.
pub const AFTER_HELP: &str = "Examples:
  source <(chaos completions bash)                 # this bash session
  chaos completions bash > /etc/bash_completion.d/chaos
  chaos completions zsh > \"${fpath[1]}/_chaos\"       # then: compinit
  chaos completions fish > ~/.config/fish/completions/chaos.fish
  chaos completions powershell >> $PROFILE";

/// Arguments of `chaos completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to generate the script for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

/// Writes the completion script for `args.shell` to stdout.
pub fn run(args: &CompletionsArgs) -> u8 {
    let mut cmd = visible_only(crate::cli::Cli::command());
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "chaos", &mut out);
    exit::OK
}

/// The command tree without hidden subcommands (the internal
/// `demo-service`): clap_complete's bash generator lists hidden ones too,
/// and clap has no way to remove a subcommand, so the root is rebuilt
/// with the same arguments and only the visible subcommands.
fn visible_only(root: clap::Command) -> clap::Command {
    let visible: Vec<clap::Command> =
        root.get_subcommands().filter(|c| !c.is_hide_set()).cloned().collect();
    clap::Command::new("chaos")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommands(visible)
        .args(root.get_arguments().cloned())
}
