//! A load that says which ids verve acknowledged: it sends `GET /api/verve/accept?id=N` for
//! N = FIRST, FIRST+1, … on one keep-alive connection, `DEPTH` requests in flight. It prints
//! `start <unix ms>` once, then `ok <id> <sent> <answered>` for each id answered `ok`, the
//! milliseconds from its start when the request went out and when its answer came. The
//! power-cut test runs it inside a guest beside verve and reads the guest's console: a line
//! printed is an acknowledgement the disk must keep (tests/it/powercut/), and the times tell
//! the window it fell in.
//!
//! `acked_ids ADDR FIRST DEPTH`

use std::collections::VecDeque;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, first, depth] = args.as_slice() else {
        eprintln!("usage: acked_ids ADDR FIRST DEPTH");
        std::process::exit(2);
    };
    let first: i64 = first.parse().expect("FIRST: a number");
    let depth: usize = depth.parse().expect("DEPTH: a number");
    let mut stream = connect(addr);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let started = Instant::now();
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis();
    writeln!(out, "start {unix_ms}").expect("print");
    let mut next = first;
    // Each request's id and when it went out.
    let mut in_flight: VecDeque<(i64, u128)> = VecDeque::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut requests = Vec::new();
        let sent = started.elapsed().as_millis();
        while in_flight.len() < depth {
            requests.extend_from_slice(
                format!("GET /api/verve/accept?id={next} HTTP/1.1\r\nHost: verve\r\n\r\n")
                    .as_bytes(),
            );
            in_flight.push_back((next, sent));
            next += 1;
        }
        stream.write_all(&requests).expect("send");
        let n = stream.read(&mut chunk).expect("receive");
        assert!(n > 0, "verve closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let ms = started.elapsed().as_millis();
        while let Some((ok, len)) = response(&buf) {
            buf.drain(..len);
            let (id, sent) = in_flight.pop_front().expect("a response to a request");
            if ok {
                writeln!(out, "ok {id} {sent} {ms}").expect("print");
            }
        }
        out.flush().expect("print");
    }
}

/// Connects, waiting for verve to listen.
fn connect(addr: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("connect {addr}: {e}"),
        }
    }
}

/// The first whole response in `buf`: whether it was `200` with body `ok`, and its length.
fn response(buf: &[u8]) -> Option<(bool, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).expect("a response head");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    if buf.len() < head_end + length {
        return None;
    }
    let ok = head.starts_with("HTTP/1.1 200") && &buf[head_end..head_end + length] == b"ok";
    Some((ok, head_end + length))
}
