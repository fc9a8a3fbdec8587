//! The admin requests for header and body checks: an import or a clear is
//! one `ChecksReplace` command (the text travels and every node compiles
//! it); a listing or a test compiles this node's applied table.

use hamail_types::{CheckKind, Command};
use serde::{Deserialize, Serialize};

use crate::protocol::{AdminRequest, AdminResponse};
use crate::server::{AdminContext, read, write};

/// One rule of a table, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChecksRuleRow {
    pub line: usize,
    /// `/regex/flags` (with `!` when negated).
    pub pattern: String,
    pub action: String,
    /// The text after the action, `$1` not filled in.
    pub text: String,
}

/// `checks list`: a table with its rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChecksTableView {
    pub kind: CheckKind,
    pub changed_ms: u64,
    /// The rules in source order (if/endif lines are not rules).
    pub rules: Vec<ChecksRuleRow>,
    /// The table as imported.
    pub source: String,
}

/// `checks test`: the rule that matched, if one did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChecksTestResult {
    pub kind: CheckKind,
    /// False when the node has no such table.
    pub table: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<ChecksRuleRow>,
    /// The action's text with the groups filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The lines of the `if` blocks around the rule, outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub within: Vec<usize>,
}

fn row(r: &hamail_checks::Rule) -> ChecksRuleRow {
    ChecksRuleRow {
        line: r.line,
        pattern: r.pattern().to_string(),
        action: r.action.to_string(),
        text: r.text.clone(),
    }
}

/// A stored table that no longer compiles (this node's regex differs from
/// the one that validated it): said as such, not as a store failure.
fn compiled(
    kind: CheckKind,
    source: &str,
) -> Result<hamail_checks::Table, hamail_store::StoreError> {
    hamail_checks::parse(kind, source).map_err(|e| hamail_store::StoreError::Decode {
        what: "checks table",
        reason: format!("{kind}_checks {e}"),
    })
}

pub(crate) async fn handle(ctx: &AdminContext, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::ChecksImport { kind, source } => {
            if source.trim().is_empty() {
                return AdminResponse::error(format!(
                    "the {kind}_checks table to import is empty; use `hamail checks clear {kind}`"
                ));
            }
            tracing::info!(%kind, bytes = source.len(), "checks import received");
            write(ctx, vec![Command::ChecksReplace { kind, source }]).await
        }
        AdminRequest::ChecksClear { kind } => {
            write(
                ctx,
                vec![Command::ChecksReplace {
                    kind,
                    source: String::new(),
                }],
            )
            .await
        }
        AdminRequest::ChecksList { kind } => {
            read(ctx, move |s| {
                let mut out = Vec::new();
                for k in CheckKind::ALL {
                    if kind.is_some_and(|want| want != k) {
                        continue;
                    }
                    let Some(rec) = s.checks(k)? else {
                        continue;
                    };
                    let table = compiled(k, &rec.source)?;
                    out.push(ChecksTableView {
                        kind: k,
                        changed_ms: rec.changed_ms,
                        rules: table.all_rules().into_iter().map(row).collect(),
                        source: rec.source,
                    });
                }
                Ok(out)
            })
            .await
        }
        AdminRequest::ChecksTest { kind, input } => {
            read(ctx, move |s| {
                let Some(rec) = s.checks(kind)? else {
                    return Ok(ChecksTestResult {
                        kind,
                        table: false,
                        rule: None,
                        text: None,
                        within: Vec::new(),
                    });
                };
                let table = compiled(kind, &rec.source)?;
                let m = table.find(input.as_bytes());
                Ok(ChecksTestResult {
                    kind,
                    table: true,
                    rule: m.as_ref().map(|m| row(m.rule)),
                    text: m
                        .as_ref()
                        .map(|m| String::from_utf8_lossy(&m.text).into_owned()),
                    within: m.map(|m| m.within).unwrap_or_default(),
                })
            })
            .await
        }
        other => AdminResponse::error(format!("not a checks request: {other:?}")),
    }
}
