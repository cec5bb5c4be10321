//! The simulated keyspace against a real redis-server: the same commands, the same replies.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

use super::super::protocol::PUBLISH_LARGER;
use super::keyspace::Keyspace;

/// A redis-server on a Unix socket in a temporary directory (no port to choose), stopped on
/// drop.
struct UnixRedis {
    child: Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl UnixRedis {
    fn start() -> UnixRedis {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        UnixRedis {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for UnixRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets' members come in no set order: sorted, they compare.
fn comparable(value: Value) -> Value {
    match value {
        Value::Array(mut items) => {
            items.sort_by_key(|v| format!("{v:?}"));
            Value::Array(items)
        }
        other => other,
    }
}

#[test]
fn keyspace_answers_as_redis_does() {
    let script: &[&[&str]] = &[
        &["SADD", "w", "1", "2", "3"],
        &["SADD", "w", "1", "4"],
        &["SCARD", "w"],
        &["SMEMBERS", "w"],
        &["SCARD", "none"],
        &["SMEMBERS", "none"],
        &["GET", "w"],
        &["SET", "lease", "a", "NX", "PX", "100000"],
        &["SET", "lease", "b", "NX", "EX", "100"],
        &["GET", "lease"],
        &["SET", "lease", "c", "XX", "KEEPTTL"],
        &["SET", "none", "c", "XX", "KEEPTTL"],
        &["GET", "lease"],
        &["SET", "count", "5", "PX", "100000"],
        &["SET", "count", "6", "KEEPTTL"],
        &["EVAL", PUBLISH_LARGER, "1", "count", "9"],
        &["GET", "count"],
        &["EVAL", PUBLISH_LARGER, "1", "count", "3"],
        &["GET", "count"],
        &["EVAL", PUBLISH_LARGER, "1", "none", "3"],
        &["SET", "lost", "lost", "NX", "PX", "1000"],
        &["EVAL", PUBLISH_LARGER, "1", "lost", "3"],
        &["EXISTS", "lease"],
        &["UNLINK", "lease"],
        &["UNLINK", "lease"],
        &["EXISTS", "lease"],
        &["EXPIRE", "w", "100"],
        &["EXPIRE", "none", "100"],
        &["PEXPIRE", "w", "100000"],
        &["ZADD", "live", "5", "a"],
        &["ZADD", "live", "6", "a"],
        &["ZADD", "live", "3", "b"],
        &["ZRANGEBYSCORE", "live", "-inf", "+inf"],
        &["ZRANGEBYSCORE", "live", "4", "+inf"],
        &["ZREMRANGEBYSCORE", "live", "-inf", "4"],
        &["ZREM", "live", "a", "none"],
        &["ZRANGEBYSCORE", "live", "-inf", "+inf"],
        &["ZRANGEBYSCORE", "none", "0", "+inf"],
        &["ZREMRANGEBYSCORE", "none", "-inf", "4"],
    ];
    let server = UnixRedis::start();
    let url = format!("unix://{}", server.socket.display());
    let mut real = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut simulated = Keyspace::default();
    for command in script {
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        let expected: Value = cmd.query(&mut real).unwrap_or_else(|e| {
            let reply = format!("-{} {}\r\n", e.code().unwrap(), e.detail().unwrap());
            redis::parse_redis_value(reply.as_bytes()).unwrap()
        });
        let args: Vec<Vec<u8>> = command.iter().map(|a| a.as_bytes().to_vec()).collect();
        let got = simulated.run(&args, Duration::ZERO);
        assert_eq!(comparable(got), comparable(expected), "{command:?}");
    }
}
