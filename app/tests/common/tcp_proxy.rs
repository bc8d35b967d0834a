//! A TCP forwarder a test can cut and restore, standing between the app and
//! a real server to simulate that server going away and coming back.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Forwards `listen` → `target` while up; when cut, closes every forwarded
/// connection and refuses new ones (the port stops listening).
#[derive(Debug)]
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    target: SocketAddr,
    running: Mutex<Option<CancellationToken>>,
}

impl TcpProxy {
    /// Starts forwarding to `target` on a free port.
    pub async fn start(target: SocketAddr) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Arc::new(Self {
            addr: listener.local_addr().expect("addr"),
            target,
            running: Mutex::new(None),
        });
        proxy.serve(listener).await;
        proxy
    }

    async fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        *self.running.lock().await = Some(token.clone());
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut inbound, _)) = accepted else { continue };
                let conn_token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = conn_token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
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

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind the same port");
        self.serve(listener).await;
    }
}
