//! The README's tables say what the program does. The flags come from one
//! source, the program's own argument list (clap): every flag is in `--help`
//! and in the README's flags table, and the table has no other. The signals
//! named in `--help`'s signal table and in the README's are the same.

use std::collections::BTreeSet;
use std::process::Command;

use clap::Args;

use crate::util::server_binary;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

fn help() -> String {
    let output = Command::new(server_binary()).arg("--help").output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The lines of the README section that starts with `heading`.
fn section<'a>(readme: &'a str, heading: &str) -> Vec<&'a str> {
    readme
        .lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| !line.starts_with("## "))
        .collect()
}

#[test]
fn every_flag_is_in_help_and_in_the_readme_and_the_readme_has_no_other() {
    let command = prefork_server::ServerFlags::augment_args(clap::Command::new("prefork-server"));
    let flags: BTreeSet<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .map(|long| format!("--{long}"))
        .collect();
    assert!(flags.len() >= 20, "{flags:?}");
    let help = help();
    for flag in &flags {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "--help lacks {flag}"
        );
    }
    let readme = readme();
    let table: BTreeSet<String> = section(&readme, "## Flags")
        .into_iter()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|cell| cell.split(['`', ' ']).next())
        .map(str::to_owned)
        .collect();
    assert_eq!(table, flags, "the README's flags table and the program's flags differ");
}

#[test]
fn the_signal_tables_of_help_and_the_readme_name_the_same_signals() {
    let help = help();
    let in_help: BTreeSet<String> = help
        .lines()
        .skip_while(|line| !line.starts_with("Signals"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .flat_map(|line| {
            let line = line.trim_start();
            // The first column, or for "others" the list in its text.
            let names = match line.strip_prefix("others") {
                Some(rest) => rest.split(" are ").next().unwrap_or_default().to_owned(),
                None if !line.starts_with(char::is_uppercase) => String::new(),
                None => line.split("  ").next().unwrap_or_default().to_owned(),
            };
            names
                .replace(" and the", ",")
                .split(',')
                .map(|name| name.trim().trim_start_matches("real-time").trim().to_owned())
                .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
                .collect::<Vec<_>>()
        })
        .collect();
    let readme = readme();
    let in_readme: BTreeSet<String> = section(&readme, "## Signals")
        .into_iter()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|line| {
            line.split('|')
                .nth(1)
                .unwrap_or_default()
                .split(',')
                .map(|name| name.trim().trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|name| name != "real-time")
        .collect();
    assert!(
        in_help.contains("TERM") && in_help.contains("PIPE") && in_help.len() >= 20,
        "{in_help:?}"
    );
    assert_eq!(in_help, in_readme, "--help's signal table and the README's differ");
}
