//! Ports for servers a test stops and starts again on the same port.
//!
//! A port from `bind(0)` lies in the kernel's ephemeral range, so while
//! its server is down the kernel may hand it to anything else the test
//! starts (a listener on port 0, a client's outgoing connection), and the
//! restarted server then cannot bind it, or the test's client reaches the
//! wrong server. Seen once in CI: a gateway's listener took a stopped
//! Redis's port. A port below the ephemeral range is never handed out
//! that way, so it stays free for the restart.

use std::net::TcpListener;

/// The low end of the kernel's ephemeral range (Linux's default when it
/// cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A listener on 127.0.0.1 below the ephemeral range (from 10,000 up),
/// non-blocking (ready for `tokio::net::TcpListener::from_std`): only a
/// listener asking for its port by number can take that port.
pub fn restartable_listener() -> TcpListener {
    let low = u32::from(ephemeral_low().max(10_001));
    let span = low - 10_000;
    // Start somewhere different in each process and call, then walk on.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % span;
    let listener = (0..span)
        .map(|i| u16::try_from(10_000 + (start + i) % span).expect("below the ephemeral range"))
        .find_map(|port| TcpListener::bind(("127.0.0.1", port)).ok())
        .expect("a free port below the ephemeral range");
    listener.set_nonblocking(true).expect("non-blocking");
    listener
}

/// The port of such a listener, released: for a server in another
/// process, which binds it by number.
pub fn restartable_port() -> u16 {
    restartable_listener().local_addr().expect("addr").port()
}
