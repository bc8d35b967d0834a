//! Thread-per-core serving, as nginx's worker processes: `server.workers`
//! OS threads, each a single-threaded tokio runtime with its own listening
//! socket per public listener (`SO_REUSEPORT`, so the kernel spreads new
//! connections across workers) and its own upstream connection pools (see
//! [`crate::worker_id`]). A request is accepted, limited, proxied and answered on
//! one thread: no task hops between threads, no cross-thread wake-ups.
//!
//! Contract: [`bind`] makes the first socket of a listener (and reports a
//! busy address at start-up); [`spawn`] starts the workers, which accept
//! until the stop token fires. [`Workers::stopped_accepting`] resolves once
//! every worker has closed its sockets; the workers keep driving their open
//! connections until [`Workers::finish`], which drops whatever is left and
//! waits for the threads to end. Dropping [`Workers`] (the serving future
//! dropped without a drain) ends the workers at once.

use crate::generation::Current;
use crate::server::{self, Listener, ServerContext};
use shared::shutdown::{CancellationToken, TaskTracker};
use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// Pending connections a listening socket queues (as tokio's own default).
const BACKLOG: i32 = 1024;

/// A listening socket on `addr` that others may share (port 0 picks a free
/// port; [`spawn`] binds each further worker's socket to the port found).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Running workers.
#[derive(Debug)]
pub struct Workers {
    accepting: TaskTracker,
    running: TaskTracker,
    finish: CancellationToken,
}

impl Workers {
    /// Resolves when every worker has stopped accepting and closed its
    /// listening sockets.
    pub async fn stopped_accepting(&self) {
        self.accepting.close();
        self.accepting.wait().await;
    }

    /// Drops the connections still open and waits for the threads to end.
    pub async fn finish(&self) {
        self.finish.cancel();
        self.running.close();
        self.running.wait().await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Never leave a worker waiting for a finish that cannot come.
        self.finish.cancel();
    }
}

/// Starts `count` workers on `listeners` (each the first socket of its
/// address; the other workers bind their own beside it). Connection tasks
/// are tracked in `ctx.tracker`, so the caller's drain covers them.
pub fn spawn(
    count: usize,
    listeners: Vec<(TcpListener, Listener)>,
    current: &Current,
    ctx: &Arc<ServerContext>,
) -> anyhow::Result<Workers> {
    let workers = Workers {
        accepting: TaskTracker::new(),
        running: TaskTracker::new(),
        finish: CancellationToken::new(),
    };
    let mut per_worker: Vec<Vec<(TcpListener, Listener)>> = (0..count).map(|_| Vec::new()).collect();
    for (first, kind) in listeners {
        let addr = first.local_addr()?;
        for sockets in per_worker.iter_mut().skip(1) {
            let sibling = bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr} again: {e}"))?;
            sockets.push((sibling, kind));
        }
        per_worker[0].push((first, kind));
    }
    for (index, sockets) in per_worker.into_iter().enumerate() {
        let (accepting_token, running_token) = (workers.accepting.token(), workers.running.token());
        let (current, ctx, finish) = (current.clone(), ctx.clone(), workers.finish.clone());
        std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                let _running = running_token;
                crate::worker_id::set(index);
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(worker = index, %error, "cannot start a worker runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let serve = async {
                        let mut loops = Vec::new();
                        for (socket, kind) in sockets {
                            match tokio::net::TcpListener::from_std(socket) {
                                Ok(listener) => {
                                    loops.push(tokio::spawn(server::accept_loop(
                                        listener,
                                        kind,
                                        current.clone(),
                                        ctx.clone(),
                                    )));
                                }
                                Err(error) => tracing::error!(worker = index, %error, "cannot use a listening socket"),
                            }
                        }
                        for l in loops {
                            let _ = l.await;
                        }
                        drop(accepting_token);
                        // Keep driving this worker's connections through the drain.
                        std::future::pending::<()>().await;
                    };
                    // `finish` ends the worker at once: after the drain, or
                    // when the `Workers` handle is dropped without one.
                    tokio::select! {
                        () = serve => {}
                        () = finish.cancelled() => {}
                    }
                });
                // Dropping the runtime closes the connections still open.
            })?;
    }
    Ok(workers)
}
