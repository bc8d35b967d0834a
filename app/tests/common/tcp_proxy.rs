//! A TCP forwarder a test can cut and restore, standing between the app and
//! a real server to simulate that server going away and coming back, or
//! holding the server's replies back (requests still arrive and take effect:
//! the client cannot know their outcome).

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

/// Forwards `listen` → `target` while up; when cut, closes every forwarded
/// connection and refuses new ones (the port stops listening).
#[derive(Debug)]
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    target: SocketAddr,
    running: Mutex<Option<CancellationToken>>,
    held: watch::Sender<bool>,
}

impl TcpProxy {
    /// Starts forwarding to `target` on a free port.
    pub async fn start(target: SocketAddr) -> Arc<Self> {
        // Its port outlives `cut` (see `restartable_listener`).
        let listener = TcpListener::from_std(super::ports::restartable_listener()).expect("listener");
        let proxy = Arc::new(Self {
            addr: listener.local_addr().expect("addr"),
            target,
            running: Mutex::new(None),
            held: watch::Sender::new(false),
        });
        proxy.serve(listener).await;
        proxy
    }

    async fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        *self.running.lock().await = Some(token.clone());
        let target = self.target;
        let held = self.held.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { continue };
                let (conn_token, held) = (token.clone(), held.subscribe());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_reads, client_writes) = inbound.into_split();
                    let (server_reads, mut server_writes) = outbound.into_split();
                    tokio::select! {
                        () = conn_token.cancelled() => {}
                        _ = tokio::io::copy(&mut client_reads, &mut server_writes) => {}
                        () = replies(server_reads, client_writes, held) => {}
                    }
                });
            }
        });
    }

    /// Cuts every connection and stops listening.
    pub async fn cut(&self) {
        if let Some(token) = self.running.lock().await.take() {
            token.cancel();
        }
        // Let the accept loop drop the listener before anyone reconnects.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    /// Holds back (`true`) or lets through (`false`) the server's replies
    /// on every connection; held bytes are delivered on release.
    pub fn hold_replies(&self, hold: bool) {
        self.held.send_replace(hold);
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind the same port");
        self.serve(listener).await;
    }
}

/// Copies the server's replies to the client, waiting while they are held.
async fn replies(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut held: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if held.wait_for(|held| !held).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
