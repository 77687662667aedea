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
    let mut cmd = crate::cli::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "chaos", &mut out);
    exit::OK
}
