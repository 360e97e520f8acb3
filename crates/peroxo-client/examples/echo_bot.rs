//! An echo bot: connects as a user and answers every direct message it receives with the same
//! text, prefixed with `echo: `, sent back to its sender. It runs on [`Client`], so each message
//! is answered once however often the bot reconnects (the stream delivers every seq once, in
//! order), messages sent while it was away are answered when it comes back (it syncs from
//! `--last-seq`), and every answer goes again with the same `client_msg_id` until it is acked.
//!
//! Against a node started with `peroxo serve --dev`:
//!
//! ```text
//! cargo run -p peroxo-client --example echo_bot -- --url ws://127.0.0.1:8080/ws --user echo
//! cargo run -p peroxo-client --example chat -- --url ws://127.0.0.1:8080/ws --user alice \
//!     --to echo --line "hi echo"
//! ```
//!
//! In JWT mode, leave out `--user` and pass `--token "$(peroxo token --user echo)"`. With
//! `--exit-after N` the bot exits once N answers are acked (a test runs it that way).

use anyhow::Context;
use clap::Parser;
use peroxo_client::{Ack, Client, ClientConfig, Delivered, Event, SendError, Status, Via};
use tokio::task::JoinSet;

#[derive(Debug, Parser)]
struct Args {
    /// A gateway node's WebSocket URL; repeat for the nodes of a cluster.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// Dev mode: the user to connect as (added to the URL as `?user=`).
    #[arg(long)]
    user: Option<String>,
    /// JWT mode: the token, sent as `Authorization: Bearer`.
    #[arg(long)]
    token: Option<String>,
    /// Answer only messages after this seq of the bot's stream (0: every message it has).
    #[arg(long, default_value_t = 0)]
    last_seq: u64,
    /// Exit once this many answers are acked.
    #[arg(long)]
    exit_after: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let urls = args
        .url
        .iter()
        .map(|url| match &args.user {
            Some(user) => format!("{url}?user={user}"),
            None => url.clone(),
        })
        .collect();
    let mut config = ClientConfig::with_urls(urls);
    config.token = args.token;
    config.last_seq = args.last_seq;
    let (client, mut events) = Client::connect(config)
        .await
        .context("connecting to the gateway")?;
    let Status::Connected { welcome, .. } = client.status() else {
        anyhow::bail!("not connected: {:?}", client.status());
    };
    let me = welcome.user;
    println!("echoing direct messages to {me}");

    let mut answers: JoinSet<Result<Ack, SendError>> = JoinSet::new();
    let mut acked = 0u64;
    while args.exit_after.is_none_or(|n| acked < n) {
        tokio::select! {
            event = events.next() => match event {
                Some(Event::Message(message)) if is_for_me(&message, &me) => {
                    let answer = client.submit(&message.from, format!("echo: {}", message.text))?;
                    answers.spawn(answer.acked());
                }
                Some(Event::Stopped(error)) => anyhow::bail!("the client stopped: {error}"),
                Some(event) => report(&event),
                None => break,
            },
            Some(answer) = answers.join_next() => {
                let ack = answer?.context("answering")?;
                acked += 1;
                println!("answered in {} (seq {})", ack.conversation_id, ack.seq);
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    client.close().await;
    Ok(())
}

/// A direct message to the bot from someone else: not its own answers (`Via::Ack`, or live
/// copies of them on another connection of the same user), not a group message.
fn is_for_me(message: &Delivered, me: &str) -> bool {
    message.via != Via::Ack && message.from != me && message.to == me
}

fn report(event: &Event) {
    match event {
        Event::Connected { url, last_seq, .. } => {
            println!("connected to {url} (last seq {last_seq})");
        }
        Event::Disconnected { cause, retry_in }
        | Event::ConnectFailed {
            cause, retry_in, ..
        } => match retry_in {
            Some(delay) => println!("{cause}; reconnecting in {delay:?}"),
            None => println!("{cause}; giving up"),
        },
        Event::Anomaly(what) => println!("anomaly: {what}"),
        _ => {}
    }
}
