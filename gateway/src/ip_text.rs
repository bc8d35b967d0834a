//! IP addresses as text without the formatting machinery: every proxied
//! request writes its client's address into two forwarding headers and the
//! access log, and `Display` for an IPv4 address costs about a thousand
//! instructions (callgrind) where writing its digits costs a few dozen.
//!
//! Contract: the text is exactly what `Display` prints (dotted decimal for
//! IPv4, RFC 5952 for IPv6, which takes the `Display` path).

use std::io::Write as _;
use std::net::IpAddr;

/// The longest address text: an IPv6 address with an embedded IPv4 tail.
const MAX_LEN: usize = 45;

/// One address's text, on the stack.
#[derive(Debug, Clone, Copy)]
pub struct IpText {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl IpText {
    /// The text of `ip`.
    pub fn new(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; MAX_LEN],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                let mut rest = &mut text.buf[..];
                let _ = write!(rest, "{v6}");
                text.len = MAX_LEN - rest.len();
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_what_display_prints() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().expect("an address");
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes(), "{ip}");
        }
    }
}
