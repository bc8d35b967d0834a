//! A raw HTTP/1.1 client for attack tests: a socket bound to a chosen
//! loopback address (Linux routes all of 127.0.0.0/8 to loopback, so each
//! address is a distinct client to the gateway), bytes written exactly as
//! given, answers read as they come.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One raw connection.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read but not yet returned as part of an answer.
    pending: Vec<u8>,
}

/// One answer read off the connection.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The head, status line included.
    pub head: String,
    /// The body.
    pub body: String,
}

impl Answer {
    /// A header's value (the first with that name), lower-cased name.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

impl RawClient {
    /// Connects from `from` (a loopback address such as `127.0.0.9`) to `to`.
    pub async fn connect(from: &str, to: SocketAddr) -> Self {
        let from: IpAddr = from.parse().expect("an address");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(from, 0)).expect("bind");
        let stream = socket.connect(to).await.expect("connect");
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Writes `bytes` as they are (errors ignored: the peer may have closed).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads one answer (head and a `Content-Length` body) within `wait`;
    /// `None` when the connection closed or nothing complete came in time.
    pub async fn answer(&mut self, wait: Duration) -> Option<Answer> {
        tokio::time::timeout(wait, self.read_answer()).await.ok().flatten()
    }

    async fn read_answer(&mut self) -> Option<Answer> {
        loop {
            if let Some(answer) = self.take_answer() {
                return Some(answer);
            }
            let mut buf = vec![0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn take_answer(&mut self) -> Option<Answer> {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let mut answer = Answer {
            status,
            head: head.to_string(),
            body: String::new(),
        };
        let length: usize = answer
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if rest.len() < length {
            return None;
        }
        answer.body = rest[..length].to_string();
        let used = head.len() + 4 + length;
        self.pending.drain(..used.min(self.pending.len()));
        Some(answer)
    }

    /// Waits until the gateway closes the connection: `true` if it did
    /// within `wait` (whatever it sent meanwhile is discarded).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let drain = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(wait, drain).await.is_ok()
    }
}
