//! The `checks` verbs: header_checks and body_checks tables in Postfix's
//! regexp syntax. A file is parsed here, whole, before anything is sent:
//! the first bad line is named with its number and nothing changes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use hamail_admin::{AdminRequest, ChecksRuleRow, ChecksTableView, ChecksTestResult};
use hamail_types::CheckKind;

#[derive(Debug, Subcommand)]
pub enum ChecksVerb {
    /// Replace a table with a Postfix regexp table file, all or nothing.
    ///
    /// `header` is header_checks, `body` body_checks. The file is read as
    /// Postfix reads it (/pattern/flags ACTION text, !/pattern/, if/endif,
    /// comments, continuation lines). If any line is bad, it is named and
    /// nothing changes. Every node applies the same table.
    Import {
        /// header or body.
        kind: CheckKind,
        file: PathBuf,
    },
    /// List the tables' rules: line, pattern, action, text.
    List {
        /// header or body (both when left out).
        kind: Option<CheckKind>,
        #[arg(long)]
        json: bool,
    },
    /// Show which rule matches a header ('Subject: ...') or a body line.
    Test {
        /// header or body.
        kind: CheckKind,
        /// A header as `Name: value`, or one body line.
        input: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a table.
    Clear {
        /// header or body.
        kind: CheckKind,
    },
}

pub(super) fn checks_request(verb: ChecksVerb) -> anyhow::Result<(AdminRequest, bool)> {
    Ok(match verb {
        ChecksVerb::Import { kind, file } => (
            AdminRequest::ChecksImport {
                kind,
                source: read_table(kind, &file)?,
            },
            false,
        ),
        ChecksVerb::List { kind, json } => (AdminRequest::ChecksList { kind }, json),
        ChecksVerb::Test { kind, input, json } => (AdminRequest::ChecksTest { kind, input }, json),
        ChecksVerb::Clear { kind } => (AdminRequest::ChecksClear { kind }, false),
    })
}

/// The file's text, once it parses as a whole and has a rule.
fn read_table(kind: CheckKind, file: &Path) -> anyhow::Result<String> {
    let source = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {} (a regexp table is text)", file.display()))?;
    let table = match hamail_checks::parse(kind, &source) {
        Ok(t) => t,
        Err(e) => bail!("{}: {e}; nothing imported", file.display()),
    };
    if table.is_empty() {
        bail!(
            "{}: no rules in the file, nothing imported (to remove the table: hamail checks clear {kind})",
            file.display()
        );
    }
    Ok(source)
}

fn rule_line(r: &ChecksRuleRow) -> String {
    if r.text.is_empty() {
        format!("line {}: {} {}", r.line, r.pattern, r.action)
    } else {
        format!("line {}: {} {} {}", r.line, r.pattern, r.action, r.text)
    }
}

pub(super) fn print_tables(tables: Vec<ChecksTableView>) {
    if tables.is_empty() {
        println!("no checks tables");
        return;
    }
    for t in tables {
        println!(
            "{}_checks: {} rules (changed {} UTC)",
            t.kind,
            t.rules.len(),
            hamail_smtp::mailq_date(t.changed_ms / 1000)
        );
        for r in &t.rules {
            println!("  {}", rule_line(r));
        }
    }
}

pub(super) fn print_test(r: ChecksTestResult) {
    if !r.table {
        println!("no {}_checks table", r.kind);
        return;
    }
    match r.rule {
        None => println!("no match"),
        Some(rule) => {
            println!("{}", rule_line(&rule));
            if let Some(text) = r.text.filter(|t| *t != rule.text) {
                println!("  text: {text}");
            }
            if !r.within.is_empty() {
                let lines: Vec<String> = r.within.iter().map(|l| l.to_string()).collect();
                println!("  inside the if on line {}", lines.join(", "));
            }
        }
    }
}
