//! A tiny chat client: connects as a user, sends one line to a peer, and prints what arrives
//! (messages of the user's stream in seq order, presence, reconnects) until Ctrl-C.
//!
//! Against a node started with `peroxo serve --dev`:
//!
//! ```text
//! cargo run -p peroxo-client --example chat -- --url ws://127.0.0.1:8080/ws --user bob
//! cargo run -p peroxo-client --example chat -- --url ws://127.0.0.1:8080/ws --user alice \
//!     --to bob --line "hi bob"
//! ```
//!
//! In JWT mode, leave out `--user` and pass `--token "$(peroxo token --user alice)"`.

use anyhow::Context;
use clap::Parser;
use peroxo_client::{Client, ClientConfig, Event};

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
    /// Who to send the line to.
    #[arg(long, requires = "line")]
    to: Option<String>,
    /// The line to send.
    #[arg(long, requires = "to")]
    line: Option<String>,
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
    let (client, mut events) = Client::connect(config)
        .await
        .context("connecting to the gateway")?;
    if let (Some(to), Some(line)) = (args.to, args.line) {
        let ack = client.send(to, line).await.context("sending the line")?;
        println!(
            "sent: message {} in {} (seq {}{})",
            ack.message_id,
            ack.conversation_id,
            ack.seq,
            if ack.duplicate { ", duplicate" } else { "" }
        );
    }
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => print_event(&event),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                client.close().await;
                break;
            }
        }
    }
    Ok(())
}

fn print_event(event: &Event) {
    match event {
        Event::Message(m) => println!("#{} {} -> {}: {}", m.seq, m.from, m.to, m.text),
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
        Event::Frame(frame) => println!("{}", frame.encode()),
        Event::Stopped(error) => println!("stopped: {error}"),
        Event::Error { error, .. } => println!("error: {error}"),
        Event::Anomaly(what) => println!("anomaly: {what}"),
        _ => {}
    }
}
