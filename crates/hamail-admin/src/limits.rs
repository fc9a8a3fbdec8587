//! The admin requests for mailbox quotas and per-domain settings: writes
//! become `QuotaSet` / `QuotaDel` / `DomainSet`, `quota list` reads this
//! node's applied quotas table.

use hamail_types::Command;

use crate::protocol::{AdminRequest, AdminResponse, QuotaRow};
use crate::server::{AdminContext, read, write};

pub(crate) async fn handle(ctx: &AdminContext, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::QuotaSet { address, bytes } => {
            write(ctx, vec![Command::QuotaSet { address, bytes }]).await
        }
        AdminRequest::QuotaDel { address } => write(ctx, vec![Command::QuotaDel { address }]).await,
        AdminRequest::QuotaList { domain } => {
            read(ctx, move |s| {
                Ok(s.quotas(domain.as_ref())?
                    .into_iter()
                    .map(|(a, r)| QuotaRow {
                        address: a.to_string(),
                        bytes: r.bytes,
                        updated_ms: r.updated_ms,
                    })
                    .collect::<Vec<_>>())
            })
            .await
        }
        AdminRequest::DomainSet {
            domain,
            message_size_limit,
        } => {
            write(
                ctx,
                vec![Command::DomainSet {
                    domain,
                    message_size_limit,
                }],
            )
            .await
        }
        other => AdminResponse::error(format!("not a quota or domain-setting request: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_requests_decode_with_typed_addresses() {
        let ok = r#"{"op":"quota_set","address":"a@example.jp","bytes":1000}"#;
        assert!(matches!(
            serde_json::from_str::<AdminRequest>(ok),
            Ok(AdminRequest::QuotaSet { bytes: 1000, .. })
        ));
        let bad = r#"{"op":"quota_set","address":"not an address","bytes":1000}"#;
        assert!(serde_json::from_str::<AdminRequest>(bad).is_err());
        let clear = r#"{"op":"domain_set","domain":"example.jp"}"#;
        assert!(matches!(
            serde_json::from_str::<AdminRequest>(clear),
            Ok(AdminRequest::DomainSet {
                message_size_limit: None,
                ..
            })
        ));
    }
}
