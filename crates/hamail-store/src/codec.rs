//! Value encoding: one format-version byte, then postcard. The byte lets a
//! later release change the encoding and still read what is on disk.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

/// 2: node records and the node commands carry the pinned certificate key
/// (`key_sha256`). A data directory written by format 1 is refused with
/// "unknown format version 1" (pre-release: no migration).
pub const FORMAT_VERSION: u8 = 2;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // postcard only fails on a writer that is full or a type serde cannot
    // express; neither happens for a Vec and our derive'd types.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => unreachable_encode(e),
    }
}

#[cold]
fn unreachable_encode(e: postcard::Error) -> Vec<u8> {
    // Keep the invariant visible in logs instead of panicking the node.
    tracing::error!(error = %e, "postcard encoding failed");
    vec![FORMAT_VERSION]
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StoreError::Decode {
                what,
                reason: e.to_string(),
            })
        }
        Some((v, _)) => Err(StoreError::Decode {
            what,
            reason: format!("unknown format version {v} (this build reads {FORMAT_VERSION})"),
        }),
        None => Err(StoreError::Decode {
            what,
            reason: "empty value".into(),
        }),
    }
}
