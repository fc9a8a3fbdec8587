//! The admin requests for submission users and sender-allow entries:
//! writes become user commands, lists read this node's applied tables.
//! Hashes arrive already made (the CLI hashes); a plain `user list` shows
//! the scheme and dates, never the hash.

use hamail_types::Command;

use crate::protocol::{AdminRequest, AdminResponse, SenderRow, UserRow};
use crate::server::{AdminContext, read, write};

pub(crate) async fn handle(ctx: &AdminContext, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::UserAdd { address, hash } => {
            write(ctx, vec![Command::UserAdd { address, hash }]).await
        }
        AdminRequest::UserPasswd { address, hash } => {
            write(ctx, vec![Command::UserPasswd { address, hash }]).await
        }
        AdminRequest::UserDel { address } => write(ctx, vec![Command::UserDel { address }]).await,
        AdminRequest::UserImport { users } => {
            tracing::info!(users = users.len(), "user import received");
            write(ctx, vec![Command::UserImport { users }]).await
        }
        AdminRequest::UserList { domain, hashes } => {
            read(ctx, move |s| {
                Ok(s.users(domain.as_ref())?
                    .into_iter()
                    .map(|(a, r)| UserRow {
                        address: a.to_string(),
                        scheme: r.hash.scheme().name().to_string(),
                        created_ms: r.created_ms,
                        changed_ms: r.changed_ms,
                        hash: hashes.then(|| r.hash.as_str().to_string()),
                    })
                    .collect::<Vec<_>>())
            })
            .await
        }
        AdminRequest::SenderAllow { sender, user } => {
            write(ctx, vec![Command::SenderAllow { sender, user }]).await
        }
        AdminRequest::SenderDeny { sender, user } => {
            write(ctx, vec![Command::SenderDeny { sender, user }]).await
        }
        AdminRequest::SenderList => {
            read(ctx, |s| {
                Ok(s.sender_allows()?
                    .into_iter()
                    .map(|(sender, user)| SenderRow {
                        sender: sender.to_string(),
                        user: user.to_string(),
                    })
                    .collect::<Vec<_>>())
            })
            .await
        }
        other => AdminResponse::error(format!("not a user request: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_or_malformed_hash_is_refused_when_the_request_is_decoded() {
        let ok = r#"{"op":"user_add","address":"a@example.jp","hash":"{SHA512-CRYPT}$6$salt$x"}"#;
        assert!(matches!(
            serde_json::from_str::<AdminRequest>(ok),
            Ok(AdminRequest::UserAdd { .. })
        ));
        let plain = r#"{"op":"user_add","address":"a@example.jp","hash":"{PLAIN}secret"}"#;
        let e = serde_json::from_str::<AdminRequest>(plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plaintext password"), "{e}");
        assert!(!e.contains("secret"), "the error quotes the password: {e}");
        let import = r#"{"op":"user_import","users":[["a@example.jp","{MD5}x"]]}"#;
        let e = serde_json::from_str::<AdminRequest>(import)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn a_user_row_carries_no_hash_unless_asked() {
        let row = UserRow {
            address: "a@example.jp".into(),
            scheme: "ARGON2ID".into(),
            created_ms: 1,
            changed_ms: 2,
            hash: None,
        };
        let v = serde_json::to_value(&row).unwrap();
        assert!(v.get("hash").is_none(), "{v}");
        let list: AdminRequest = serde_json::from_str(r#"{"op":"user_list"}"#).unwrap();
        assert!(matches!(
            list,
            AdminRequest::UserList {
                domain: None,
                hashes: false
            }
        ));
    }
}
