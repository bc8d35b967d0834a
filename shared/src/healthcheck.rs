//! The `healthcheck` subcommand of every binary: container images have no
//! curl, so the binary probes itself (Docker's `HEALTHCHECK`, Swarm's
//! `healthcheck:`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// The address to probe for a listener bound to `listen`: a wildcard
/// address becomes loopback (the probe runs in the same container).
pub fn local_target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Sends `GET path` over HTTP/1.1 and returns the status code.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: healthcheck\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP answer: {line:?}")))
}

/// Runs the probe and turns it into a process exit code: 0 for 2xx, 1
/// otherwise, with one line on stderr saying why.
pub fn exit_code(addr: SocketAddr, path: &str) -> std::process::ExitCode {
    match probe(addr, path, Duration::from_secs(3)) {
        Ok(code) if (200..300).contains(&code) => std::process::ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("healthcheck: http://{addr}{path} answered {code}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: http://{addr}{path}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn serve_once(answer: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                // Read the whole request head before answering and closing.
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn a_2xx_is_healthy_and_anything_else_is_not() {
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(probe(ok, "/readyz", Duration::from_secs(2)).expect("answer"), 200);
        let down = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(probe(down, "/readyz", Duration::from_secs(2)).expect("answer"), 503);
        let closed = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        assert!(probe(closed, "/readyz", Duration::from_secs(2)).is_err());
    }

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        assert_eq!(
            local_target("0.0.0.0:8000".parse().expect("addr")).to_string(),
            "127.0.0.1:8000"
        );
        assert_eq!(
            local_target("[::]:9901".parse().expect("addr")).to_string(),
            "[::1]:9901"
        );
        assert_eq!(
            local_target("10.0.0.5:1".parse().expect("addr")).to_string(),
            "10.0.0.5:1"
        );
    }
}
