//! A TCP proxy between a gateway and its storage service that can cut the link on command:
//! while cut, it drops every connection it carries and every new one as soon as it arrives,
//! as a failed network or a firewall would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A running proxy; stops when dropped.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    link: Arc<Mutex<Link>>,
    stop: CancellationToken,
}

/// Whether connections pass, and the token every connection of the current period holds.
struct Link {
    cut: bool,
    period: CancellationToken,
}

impl Proxy {
    /// Listens on a free local port and forwards every connection to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = Arc::new(Mutex::new(Link {
            cut: false,
            period: CancellationToken::new(),
        }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&link),
            stop.clone(),
        ));
        Self { addr, link, stop }
    }

    /// Drops every connection under way and every new one until [`Proxy::restore`].
    pub(crate) fn cut(&self) {
        let mut link = self.link.lock().unwrap();
        link.cut = true;
        link.period.cancel();
    }

    /// Lets connections through again.
    pub(crate) fn restore(&self) {
        let mut link = self.link.lock().unwrap();
        link.cut = false;
        link.period = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    link: Arc<Mutex<Link>>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        let period = {
            let link = link.lock().unwrap();
            if link.cut {
                // Refused: closed at once.
                continue;
            }
            link.period.clone()
        };
        tokio::spawn(forward(client, upstream, period));
    }
}

/// Carries one connection until either side closes it or the link is cut.
async fn forward(mut client: TcpStream, upstream: SocketAddr, period: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        () = period.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}
