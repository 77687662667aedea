//! `chaos man`: roff manual pages generated from the clap definitions —
//! `chaos(1)` on stdout, or one page per subcommand (`chaos-run(1)`, ...)
//! written into a directory for `man` to find.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory};

use crate::exit;

/// Help text shown after the options.
pub const AFTER_HELP: &str = "Examples:
  chaos man | man -l -                           # read it now
  chaos man --dir /usr/local/share/man/man1      # chaos.1, chaos-run.1, ...
  man chaos-run";

/// Arguments of `chaos man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write chaos.1 and one page per subcommand (chaos-run.1, ...) into
    /// DIR instead of printing chaos.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints or writes the pages.
pub fn run(args: &ManArgs) -> u8 {
    match render(args) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("chaos man: {e:#}");
            exit::ENVIRONMENT
        }
    }
}

fn render(args: &ManArgs) -> anyhow::Result<()> {
    let cmd = crate::cli::Cli::command();
    match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("cannot write pages into {}", dir.display()))?;
            eprintln!("chaos man: pages written to {}", dir.display());
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page).context("cannot render")?;
            std::io::stdout().lock().write_all(&page).context("cannot write stdout")?;
        }
    }
    Ok(())
}
