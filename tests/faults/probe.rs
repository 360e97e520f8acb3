//! The check that a cluster still carries messages live once a case is over: a message sent
//! through one node must reach, without `sync`, a client on another node, in both directions
//! between the first node (the one faults strike in place) and each other one.
//!
//! Clients reconnect and sync, so the workload's own invariants hold even when a node no
//! longer exchanges anything with the others; this is what catches that.

use std::time::Duration;

use crate::common::Client;

/// How long a live delivery may take before the check fails; generous, as a live delivery
/// takes milliseconds.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(10);

/// Sends one message each way between node 0 and every other node, in `tenant` (one the
/// workload does not use), and waits for each live; the first failure, described.
pub(crate) async fn cross_node_live(urls: &[String], tenant: &str) -> Result<(), String> {
    for other in 1..urls.len() {
        for (from, to) in [(0, other), (other, 0)] {
            let (from_url, to_url) = (urls[from].clone(), urls[to].clone());
            let tenant = tenant.to_owned();
            // The protocol client panics on anything unexpected; the task turns that into an
            // answer.
            let probe = tokio::spawn(async move {
                let sender = format!("p{from}to{to}");
                let recipient = format!("p{to}from{from}");
                let mut receiver =
                    Client::connect(&format!("{to_url}?tenant={tenant}&user={recipient}")).await;
                let mut client =
                    Client::connect(&format!("{from_url}?tenant={tenant}&user={sender}")).await;
                client.dm(&recipient, "probe", "probe-1").await;
                tokio::time::timeout(DELIVERY_DEADLINE, receiver.wait_for("message"))
                    .await
                    .is_ok()
            });
            match probe.await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "a message sent through node {from} did not reach node {to} live \
                         within {DELIVERY_DEADLINE:?}"
                    ));
                }
                Err(error) => {
                    return Err(format!("probe from node {from} to node {to}: {error}"));
                }
            }
        }
    }
    Ok(())
}
