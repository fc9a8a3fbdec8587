//! NOTIFY (RFC 1996): after a snapshot swap, the configured secondaries are
//! told of every zone whose serial moved, so NSD/BIND/Knot transfer it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::rr::{DNSClass, Name, RecordSet, RecordType};
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::udp::UdpClientStream;

/// Sends a NOTIFY to each of `targets` for every zone of `current` (serials
/// by zone name) whose serial is not the one in `previous` (a new zone
/// included), each in a task of its own.
pub(crate) fn announce(
    previous: &BTreeMap<String, u32>,
    current: &BTreeMap<String, u32>,
    targets: &[SocketAddr],
) {
    for (zone, serial) in current {
        if previous.get(zone) != Some(serial) {
            for target in targets {
                tokio::spawn(notify(*target, zone.clone()));
            }
        }
    }
}

async fn notify(target: SocketAddr, zone: String) {
    let Ok(name) = Name::from_ascii(format!("{zone}.")) else {
        return;
    };
    let stream = UdpClientStream::builder(target, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(2)))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    match client
        .notify(name, DNSClass::IN, RecordType::SOA, None::<RecordSet>)
        .await
    {
        Ok(r) => {
            tracing::info!(%zone, %target, rcode = ?r.metadata.response_code, "dns: NOTIFY sent")
        }
        Err(e) => tracing::warn!(%zone, %target, error = %e, "dns: NOTIFY failed"),
    }
}
