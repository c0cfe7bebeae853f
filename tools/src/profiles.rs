//! `streamdit profiles`: list and show run profiles.

use clap::Subcommand;
use streamdit::builtin_names;
use streamdit::{Profile, Result};

use crate::common::print_stdout;

#[derive(Subcommand)]
pub(crate) enum ProfilesCommand {
    /// List the built-in profiles.
    List,
    /// Print a profile (built-in name or TOML path) as TOML.
    Show { profile: String },
}

pub(crate) fn profiles(command: ProfilesCommand) -> Result<()> {
    match command {
        ProfilesCommand::List => {
            let mut text = String::new();
            for name in builtin_names() {
                let p = Profile::builtin(name)?;
                text += &format!("{name:<22} {}\n", p.description);
            }
            print_stdout(&text)
        }
        ProfilesCommand::Show { profile } => print_stdout(&Profile::load(&profile)?.to_toml()),
    }
}
