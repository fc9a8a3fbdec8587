//! `/health` and `/metrics` over HTTP for load balancers and Prometheus.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use hamail_raft::Cluster;
use tokio_util::sync::CancellationToken;

pub async fn serve(
    listener: tokio::net::TcpListener,
    cluster: Arc<Cluster>,
    cancel: CancellationToken,
) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(cluster);
    let shutdown = async move { cancel.cancelled().await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}

async fn health(State(cluster): State<Arc<Cluster>>) -> (StatusCode, String) {
    let Some(node) = cluster.node().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not in a cluster\n".into());
    };
    let s = node.status();
    match s.leader {
        Some(l) => (
            StatusCode::OK,
            format!("ok: {} of term {}, leader {l}\n", s.state, s.term),
        ),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no raft leader\n".into()),
    }
}

async fn metrics(State(cluster): State<Arc<Cluster>>) -> String {
    let mut out = String::new();
    let Some(node) = cluster.node().await else {
        out.push_str("# not in a cluster\nhamail_cluster_member 0\n");
        return out;
    };
    let s = node.status();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge("hamail_raft_term", "Current raft term.", s.term);
    gauge(
        "hamail_raft_is_leader",
        "1 when this node is the leader.",
        u64::from(s.state == "leader"),
    );
    gauge(
        "hamail_raft_last_log_index",
        "Last raft log index.",
        s.last_log_index.unwrap_or(0),
    );
    gauge(
        "hamail_raft_applied_index",
        "Last applied log index.",
        s.applied_index.unwrap_or(0),
    );
    gauge(
        "hamail_raft_voters",
        "Voters in the membership.",
        s.voters.len() as u64,
    );
    gauge(
        "hamail_proposals_total",
        "Client writes proposed by this node.",
        node.stats.proposals.load(Ordering::Relaxed),
    );
    gauge(
        "hamail_proposal_entries_total",
        "Raft entries those writes were batched into.",
        node.stats.entries.load(Ordering::Relaxed),
    );
    out
}
