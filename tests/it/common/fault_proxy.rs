//! A small fault-injecting TCP proxy on a port chosen at run time, between verve and Redis or
//! the broker: it passes bytes both ways, and on demand adds delay, stops passing them (a
//! blackhole: the connections stay open and nothing arrives, as behind a partition without a
//! reset) or resets every connection. Test code only: toxiproxy is not packaged here.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does to the bytes it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkFault {
    Pass,
    /// Each chunk waits this long before it is passed on.
    Delay(Duration),
    /// Nothing is passed on (it waits until the fault ends); new connections are accepted and
    /// hang too.
    Blackhole,
}

/// How often a pump looks at the fault and the resets while it has nothing to pass.
const POLL: Duration = Duration::from_millis(20);

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<LinkFault>,
    /// Connections opened before the latest reset are reset.
    resets: AtomicU64,
    stop: AtomicBool,
}

/// A TCP proxy from `127.0.0.1:port` to an upstream address.
pub(crate) struct FaultProxy {
    pub(crate) port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub(crate) fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(LinkFault::Pass),
            resets: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        thread::spawn(move || accept(&listener, &accepting));
        FaultProxy { port, shared }
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn set(&self, fault: LinkFault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// Resets (RST) every open connection; connections made after pass as before.
    pub(crate) fn reset(&self) {
        self.shared.resets.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                thread::sleep(POLL);
                continue;
            }
            Err(_) => continue,
        };
        let Ok(server) = TcpStream::connect(shared.upstream) else {
            // Nothing listens upstream: the client sees the connection end, as it would.
            continue;
        };
        let epoch = shared.resets.load(Ordering::SeqCst);
        client.set_nonblocking(false).unwrap();
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
            let shared = Arc::clone(shared);
            thread::spawn(move || pump(from, to, &shared, epoch));
        }
    }
}

/// Passes bytes from `from` to `to` until either side closes or a reset comes.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, epoch: u64) {
    from.set_read_timeout(Some(POLL)).unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    let reset =
        || shared.resets.load(Ordering::SeqCst) != epoch || shared.stop.load(Ordering::SeqCst);
    loop {
        if reset() {
            abort(&from);
            abort(&to);
            return;
        }
        if *shared.fault.lock().unwrap() == LinkFault::Blackhole {
            thread::sleep(POLL);
            continue;
        }
        let n = match from.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        // What was read during a fault waits for it to end, as a partition holds it.
        loop {
            let fault = *shared.fault.lock().unwrap();
            match fault {
                LinkFault::Blackhole if !reset() => thread::sleep(POLL),
                LinkFault::Delay(d) => {
                    thread::sleep(d);
                    break;
                }
                _ => break,
            }
        }
        if reset() || to.write_all(&chunk[..n]).is_err() {
            abort(&from);
            abort(&to);
            return;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Makes the connection close with a reset (linger 0): it closes when both of its pumps have
/// dropped their handles, each within a poll.
fn abort(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this process owns, with a correctly sized option.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
