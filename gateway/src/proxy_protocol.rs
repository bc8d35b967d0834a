//! PROXY protocol v1 (text) and v2 (binary), as sent by L4 load balancers
//! (HAProxy, AWS NLB, ...) before any byte of the client's own stream.
//!
//! Contract: [`read_header`] consumes exactly the header, never a byte of
//! what follows (TLS or HTTP), and returns the client's source address, or
//! `None` for `UNKNOWN`/`LOCAL` (the balancer's own health checks), or an
//! error for anything malformed. The caller closes the connection on error,
//! and only calls this for peers it trusts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;
const V2_MAX_BODY: usize = 4096;

/// A malformed or unreadable PROXY header.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The bytes are not a PROXY header.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    /// The connection failed while reading it.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

use ProxyHeaderError::Malformed;

/// Reads one PROXY header (v1 or v2) from `io`.
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = [0u8; 16];
    io.read_exact(&mut head[..6]).await?;
    if &head[..6] == b"PROXY " {
        return read_v1(io, &head[..6]).await;
    }
    if head[..6] != V2_SIGNATURE[..6] {
        return Err(Malformed("no PROXY signature"));
    }
    io.read_exact(&mut head[6..]).await?;
    if head[..12] != V2_SIGNATURE {
        return Err(Malformed("bad v2 signature"));
    }
    let (version, command) = (head[12] >> 4, head[12] & 0x0f);
    if version != 2 || command > 1 {
        return Err(Malformed("bad v2 version or command"));
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > V2_MAX_BODY {
        return Err(Malformed("v2 header too long"));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    if command == 0 {
        return Ok(None); // LOCAL: the balancer speaking for itself.
    }
    match head[13] {
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([body[8], body[9]]),
            )))
        }
        0x21 if len >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)))
        }
        0x11 | 0x21 => Err(Malformed("v2 address block too short")),
        0x00 => Ok(None),
        _ => Ok(None), // UDP or UNIX sources carry no usable client IP.
    }
}

async fn read_v1<R: AsyncRead + Unpin>(io: &mut R, start: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut line = start.to_vec();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(Malformed("v1 line too long"));
        }
        io.read_exact(&mut byte).await?;
        line.push(byte[0]);
    }
    let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| Malformed("v1 is not ASCII"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| Malformed("v1 source address"))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(Malformed("v1 address family mismatch"));
            }
            let port: u16 = sport.parse().map_err(|_| Malformed("v1 source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(Malformed("v1 fields")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut reader = bytes;
        let result = read_header(&mut reader).await;
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest).await;
        (result, rest)
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | command);
        v.push(family);
        v.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6_are_parsed_and_nothing_more_is_read() {
        let (r, rest) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(r.expect("valid"), Some("192.0.2.7:56324".parse().expect("addr")));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (r, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 1000 443\r\n").await;
        assert_eq!(r.expect("valid"), Some("[2001:db8::7]:1000".parse().expect("addr")));
        let (r, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(r.expect("valid"), None);
    }

    #[tokio::test]
    async fn v2_proxy_and_local_are_parsed() {
        let mut body = vec![192, 0, 2, 9, 10, 0, 0, 1];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let mut bytes = v2(1, 0x11, &body);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (r, rest) = parse(&bytes).await;
        assert_eq!(r.expect("valid"), Some("192.0.2.9:4242".parse().expect("addr")));
        assert_eq!(rest, b"\x16\x03\x01", "the TLS ClientHello is left untouched");
        let (r, _) = parse(&v2(0, 0x00, &[])).await;
        assert_eq!(r.expect("valid"), None);
        let mut body6 = vec![0u8; 36];
        body6[..16].copy_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().expect("v6").octets());
        body6[32..34].copy_from_slice(&7u16.to_be_bytes());
        let (r, _) = parse(&v2(1, 0x21, &body6)).await;
        assert_eq!(r.expect("valid"), Some("[2001:db8::5]:7".parse().expect("addr")));
    }

    #[tokio::test]
    async fn malformed_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.1 99999 2\r\n",
            b"PROXY TCP4 192.0.2.1\r\n",
            &[b'P'; 6][..],
        ] {
            assert!(
                parse(bad).await.0.is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(parse(long.as_bytes()).await.0.is_err());
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).await.0.is_err(), "short address block");
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x31;
        assert!(parse(&bad_version).await.0.is_err());
    }
}
