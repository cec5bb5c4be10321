//! Restarting verve on the same port, on `io_uring`: a stop takes its listeners out of the
//! port at once, and a start does not join the port's `SO_REUSEPORT` group while the
//! listener of a process that has just ended is still in it, so no connection is handed to a
//! listener that will never accept it (and reset when it goes). What no process can help: a
//! client connecting in the ~10–20 ms after a SIGKILL, while the kernel still tears down the
//! dead process's ring, reaches its listener (README, Deploy).

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use verve::config::DriverChoice;

use crate::common::{Conn, Verve, VerveOptions, free_port};

const WAIT: Duration = Duration::from_secs(20);

fn on_port(addr: SocketAddr) -> VerveOptions {
    Verve::options()
        .workers(2)
        .driver(DriverChoice::Uring)
        .listen(addr)
}

/// Every request on fresh connections is answered.
fn serves(addr: SocketAddr, requests: usize) {
    for _ in 0..requests {
        let answer = Conn::open(addr).get("/healthz");
        assert_eq!(answer.status, 200);
    }
}

#[test]
fn ten_restarts_after_sigterm_on_io_uring_reset_no_connection() {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut verve = on_port(addr).start();
    for round in 0..10 {
        // As a deploy does: SIGTERM, the next instance once this one has exited, and a
        // client that waits until the port accepts and then asks. On `io_uring` the stopped
        // instance's listener outlives it by milliseconds: a connection it took then would
        // be reset.
        let (status, _) = verve.terminate(WAIT);
        assert!(status.success(), "round {round}");
        let next = thread::spawn(move || on_port(addr).start());
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "round {round}: nothing listens");
            thread::sleep(Duration::from_millis(1));
        }
        serves(addr, 4);
        verve = next.join().unwrap();
    }
}

#[test]
fn a_start_waits_for_a_departed_listener_before_sharing_its_port() {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // A listener in the port's group that never accepts: what a killed verve's is, on
    // `io_uring`, for the moments after its death.
    let departed = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    departed.set_reuse_port(true).unwrap();
    departed.bind(&addr.into()).unwrap();
    departed.listen(16).unwrap();
    let starting = thread::spawn(move || (on_port(addr).start(), Instant::now()));
    thread::sleep(Duration::from_millis(300));
    let gone = Instant::now();
    drop(departed);
    let (verve, listening) = starting.join().unwrap();
    assert!(
        listening > gone,
        "verve listened beside a departed listener"
    );
    assert!(
        verve
            .wait_for_log("for the listener of a process that has ended", WAIT)
            .is_some()
    );
    serves(addr, 10);

    // A listener that stays is a live process's: verve shares the port after a second.
    let live = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    live.set_reuse_port(true).unwrap();
    let other: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    live.bind(&other.into()).unwrap();
    live.listen(16).unwrap();
    let started = Instant::now();
    let sharing = on_port(other).start();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        sharing
            .wait_for_log("sharing the port with it", WAIT)
            .is_some()
    );
}
