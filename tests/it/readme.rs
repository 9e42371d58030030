//! The README's and the manual's tables say what the program does, checked
//! against one source each: the flags of `docs/configuration.md` (names, and
//! defaults where `--help` gives one word) against the program's own argument
//! list (clap); the README's signal table against `--help`'s; the sd_notify
//! table of `docs/operations.md` against what the master's code sends; the
//! layout of `docs/internals.md` against the files under `src/`. And every
//! link between them leads somewhere.
use std::collections::BTreeSet;
use std::process::Command;

use clap::Args;

use crate::util::server_binary;

fn readme() -> String {
    doc("README.md")
}

/// A file of the documentation, by its path from the repository's root.
fn doc(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|err| panic!("{path}: {err}"))
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
fn every_flag_is_in_help_and_in_the_configuration_table_and_no_other() {
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
    let configuration = doc("docs/configuration.md");
    let table: BTreeSet<String> = section(&configuration, "## Flags")
        .into_iter()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|cell| cell.split(['`', ' ']).next())
        .map(str::to_owned)
        .collect();
    assert_eq!(
        table, flags,
        "docs/configuration.md's flags table and the program's flags differ"
    );
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

/// Each flag's default, where `--help` states it as one word (`30s`, `1024`),
/// is the one the README's flags table gives.
#[test]
fn the_configuration_table_gives_the_defaults_help_gives() {
    let command = prefork_server::ServerFlags::augment_args(clap::Command::new("prefork-server"));
    let configuration = doc("docs/configuration.md");
    let rows = section(&configuration, "## Flags");
    let mut checked = 0;
    for arg in command.get_arguments() {
        let (Some(long), Some(help)) = (arg.get_long(), arg.get_help()) else {
            continue;
        };
        let help = help.to_string();
        let Some(default) = help.split("[default: ").nth(1).and_then(|rest| rest.split(']').next()) else {
            continue;
        };
        if default.contains(' ') {
            continue; // a phrase ("the path this one was started from"), not a value
        }
        let row = rows
            .iter()
            .find(|row| row.starts_with(&format!("| `--{long}")))
            .unwrap_or_else(|| panic!("no row for --{long}"));
        let cell = row.split('|').nth(2).unwrap_or_default();
        assert!(
            cell.contains(&format!("`{default}`")) || cell.trim() == default,
            "--{long}: help says {default}, docs/configuration.md {cell}"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} defaults checked");
}

/// The sd_notify messages the master sends (found in the code) are the ones
/// the README's systemd table lists, and no other.
#[test]
fn the_operations_doc_lists_every_sd_notify_message_the_master_sends() {
    const NAMES: [&str; 8] = [
        "READY",
        "RELOADING",
        "STOPPING",
        "WATCHDOG",
        "MAINPID",
        "STATUS",
        "MONOTONIC_USEC",
        "EXTEND_TIMEOUT_USEC",
    ];
    let mut sent = BTreeSet::new();
    for file in [
        "src/sys/sd_notify.rs",
        "src/master/mod.rs",
        "src/master/change.rs",
        "src/master/upgrade.rs",
        "src/master/systemd.rs",
    ] {
        let code = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let code = code.split("#[cfg(test)]").next().unwrap_or_default();
        for name in NAMES {
            // As the code writes them: in a string, followed by '='.
            if code.contains(&format!("\"{name}=")) || code.contains(&format!("\\n{name}=")) {
                sent.insert(name);
            }
        }
    }
    let operations = doc("docs/operations.md");
    let table = section(&operations, "## systemd").join("\n");
    let listed: BTreeSet<&str> = NAMES
        .into_iter()
        .filter(|name| table.contains(&format!("`{name}=")))
        .collect();
    assert!(sent.len() >= 6, "{sent:?}");
    assert_eq!(
        sent, listed,
        "what the master sends and what docs/operations.md's systemd table lists differ"
    );
}

/// Every source file is in the README's layout, and every path the layout
/// names exists.
#[test]
fn the_layout_names_every_source_file_and_only_existing_ones() {
    let root = env!("CARGO_MANIFEST_DIR");
    let internals = doc("docs/internals.md");
    let layout: Vec<&str> = section(&internals, "## Layout")
        .into_iter()
        .filter(|line| !line.starts_with("```") && !line.trim().is_empty())
        .collect();
    // Paths: "src/x.rs" at the start, or an indented "name.rs" under the last folder.
    let mut folder = String::new();
    let mut named = BTreeSet::new();
    for line in &layout {
        let first = line.split_whitespace().next().unwrap_or_default();
        if !line.starts_with(' ') {
            if first.ends_with('/') {
                folder = first.to_owned();
            } else {
                folder.clear();
            }
            named.insert(first.trim_end_matches('/').to_owned());
        } else if first.ends_with(".rs") || first.ends_with('/') {
            named.insert(format!("{folder}{}", first.trim_end_matches('/')));
        }
    }
    for path in &named {
        assert!(
            std::path::Path::new(root).join(path).exists(),
            "the layout names {path}, which does not exist"
        );
    }
    let mut sources = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(root).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                sources.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    // A folder listed without its files covers them (src/admin/, src/master/pool/).
    let files: Vec<&String> = named.iter().filter(|path| path.ends_with(".rs")).collect();
    let whole_folders: Vec<&String> = named
        .iter()
        .filter(|path| !path.ends_with(".rs"))
        .filter(|folder| !files.iter().any(|file| file.starts_with(&format!("{folder}/"))))
        .collect();
    for source in sources {
        let covered = named.contains(&source)
            || whole_folders
                .iter()
                .any(|folder| source.starts_with(&format!("{folder}/")));
        assert!(covered, "{source} is not in the layout of docs/internals.md");
    }
}

/// The README is a README: the essentials on one screen or two, the manual
/// in `docs/`.
#[test]
fn the_readme_stays_short() {
    let lines = readme().lines().count();
    assert!(lines <= 250, "README.md has {lines} lines; the manual goes in docs/");
}

/// Every relative link of the README and of `docs/` names a file that exists.
#[test]
fn every_link_in_the_docs_leads_to_a_file_that_exists() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "md") {
            pages.push(path);
        }
    }
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for link in text.split("](").skip(1) {
            let target = link.split(')').next().unwrap_or_default();
            let file = target.split('#').next().unwrap_or_default();
            if file.is_empty() || file.contains("://") {
                continue;
            }
            let resolved = page.parent().unwrap().join(file);
            assert!(
                resolved.exists(),
                "{}: a link to {target}, which does not exist",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} links checked");
}
