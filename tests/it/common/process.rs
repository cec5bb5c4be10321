//! Child processes killed when dropped, and ports chosen at run time.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A child process that is killed (SIGKILL) when dropped.
#[derive(Default)]
pub(crate) struct Killable(Option<Child>);

impl Killable {
    pub(crate) fn spawn(command: &mut Command, what: &str) -> Killable {
        Killable(Some(
            command.spawn().unwrap_or_else(|e| panic!("{what}: {e}")),
        ))
    }

    pub(crate) fn is_running(&self) -> bool {
        self.0.is_some()
    }

    /// Sends a signal (SIGSTOP, SIGCONT, ...) to the running process.
    pub(crate) fn signal(&self, sig: i32) {
        let child = self.0.as_ref().expect("a running process");
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
    }

    /// Whether the process has exited by itself (it could not start, say).
    pub(crate) fn has_exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|child| child.try_wait().is_ok_and(|status| status.is_some()))
    }

    /// SIGKILL: whatever it held in memory is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on 127.0.0.1 that nothing listens on right now, below the kernel's ephemeral range:
/// a client that keeps connecting to a port in that range while nothing listens there can
/// end up connected to itself (TCP simultaneous open) and hold the port, so that the server
/// meant for it cannot bind it.
pub(crate) fn free_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let ephemeral_low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    loop {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = 10_000 + (seed >> 8) as u16 % (ephemeral_low - 10_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// How long a server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until something accepts connections on 127.0.0.1:`port`.
pub(crate) fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `server` accepts connections on 127.0.0.1:`port` (true), or exits, its port
/// taken since it was found free (false).
pub(crate) fn listens(server: &mut Killable, port: u16, what: &str) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if server.has_exited() {
            return false;
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        thread::sleep(Duration::from_millis(20));
    }
    true
}
