//! One simulated Redis server's data: strings, sets and sorted sets with expiries, and the
//! commands verve sends that read or write them, answered as Redis 7 answers them
//! (`keyspace_answers_as_redis_does` replays a script against a real redis-server).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis::Value;

use super::super::protocol::PUBLISH_LARGER;

/// A key's value.
#[derive(Debug, Clone)]
enum Data {
    Text(Vec<u8>),
    Set(BTreeSet<Vec<u8>>),
    Sorted(BTreeMap<Vec<u8>, f64>),
}

/// A server's keys, each with its expiry (simulated time since the run started).
#[derive(Debug, Clone, Default)]
pub(super) struct Keyspace {
    keys: BTreeMap<Vec<u8>, (Data, Option<Duration>)>,
}

/// An error reply, as Redis writes it.
pub(super) fn error(text: &str) -> Value {
    redis::parse_redis_value(format!("-{text}\r\n").as_bytes()).expect("an error reply")
}

fn wrong_type() -> Value {
    error("WRONGTYPE Operation against a key holding the wrong kind of value")
}

fn int(n: usize) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn number<T: std::str::FromStr>(arg: &[u8]) -> Option<T> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

/// A `ZRANGEBYSCORE` bound: `-inf`, `+inf`, a number, or `(` and a number (exclusive).
fn bound(arg: &[u8]) -> Option<(f64, bool)> {
    match arg {
        b"-inf" => Some((f64::NEG_INFINITY, false)),
        b"+inf" | b"inf" => Some((f64::INFINITY, false)),
        [b'(', rest @ ..] => Some((number(rest)?, true)),
        _ => Some((number(arg)?, false)),
    }
}

fn within(score: f64, (min, min_open): (f64, bool), (max, max_open): (f64, bool)) -> bool {
    (if min_open { score > min } else { score >= min })
        && (if max_open { score < max } else { score <= max })
}

impl Keyspace {
    /// Whether the command changes data (what a master sends its replicas).
    pub(super) fn writes(name: &[u8]) -> bool {
        !matches!(
            name,
            b"GET" | b"SCARD" | b"SMEMBERS" | b"EXISTS" | b"ZRANGEBYSCORE"
        )
    }

    fn live(&mut self, key: &[u8], now: Duration) -> Option<&mut Data> {
        if self
            .keys
            .get(key)
            .is_some_and(|(_, expiry)| expiry.is_some_and(|at| at <= now))
        {
            self.keys.remove(key);
        }
        self.keys.get_mut(key).map(|(data, _)| data)
    }

    fn expire(&mut self, key: &[u8], after: Option<Duration>, now: Duration) -> Value {
        match (self.live(key, now), after) {
            (None, _) | (_, None) => Value::Int(0),
            (Some(_), Some(after)) => {
                self.keys.get_mut(key).expect("live").1 = Some(now + after);
                Value::Int(1)
            }
        }
    }

    /// Runs one command (`args[0]` its name, upper case) at `now`.
    pub(super) fn run(&mut self, args: &[Vec<u8>], now: Duration) -> Value {
        let (name, key) = (
            args[0].as_slice(),
            args.get(1).map_or(&[][..], Vec::as_slice),
        );
        let rest = args.get(2..).unwrap_or_default();
        match name {
            b"GET" => match self.live(key, now) {
                None => Value::Nil,
                Some(Data::Text(text)) => Value::BulkString(text.clone()),
                Some(_) => wrong_type(),
            },
            b"SET" => self.set(key, rest, now),
            b"EXISTS" => int(usize::from(self.live(key, now).is_some())),
            b"UNLINK" => int(args[1..]
                .iter()
                .filter(|k| self.live(k, now).is_some() && self.keys.remove(*k).is_some())
                .count()),
            b"EXPIRE" => self.expire(key, number(&rest[0]).map(Duration::from_secs), now),
            b"PEXPIRE" => self.expire(key, number(&rest[0]).map(Duration::from_millis), now),
            b"SADD" => self.sadd(key, rest, now),
            b"SCARD" => match self.live(key, now) {
                None => Value::Int(0),
                Some(Data::Set(members)) => int(members.len()),
                Some(_) => wrong_type(),
            },
            b"SMEMBERS" => match self.live(key, now) {
                None => Value::Array(Vec::new()),
                Some(Data::Set(members)) => {
                    Value::Array(members.iter().cloned().map(Value::BulkString).collect())
                }
                Some(_) => wrong_type(),
            },
            b"ZADD" => self.zadd(key, rest, now),
            b"ZREM" => match self.live(key, now) {
                None => Value::Int(0),
                Some(Data::Sorted(scores)) => {
                    int(rest.iter().filter(|m| scores.remove(*m).is_some()).count())
                }
                Some(_) => wrong_type(),
            },
            b"ZRANGEBYSCORE" | b"ZREMRANGEBYSCORE" => self.by_score(name, key, rest, now),
            b"EVAL" => self.eval(&args[1..], now),
            _ => error(&format!(
                "ERR unknown command '{}'",
                String::from_utf8_lossy(name)
            )),
        }
    }

    fn set(&mut self, key: &[u8], rest: &[Vec<u8>], now: Duration) -> Value {
        let mut options = rest[1..].iter();
        let (mut nx, mut xx, mut keep_ttl, mut expiry) = (false, false, false, None);
        while let Some(option) = options.next() {
            match option.to_ascii_uppercase().as_slice() {
                b"NX" => nx = true,
                b"XX" => xx = true,
                b"KEEPTTL" => keep_ttl = true,
                unit @ (b"EX" | b"PX") => {
                    let Some(n) = options.next().and_then(|n| number::<u64>(n)) else {
                        return error("ERR value is not an integer or out of range");
                    };
                    expiry = Some(if unit == b"EX" {
                        Duration::from_secs(n)
                    } else {
                        Duration::from_millis(n)
                    });
                }
                _ => return error("ERR syntax error"),
            }
        }
        let existing = self.live(key, now).is_some();
        if (nx && existing) || (xx && !existing) {
            return Value::Nil;
        }
        let kept = if keep_ttl {
            self.keys.get(key).and_then(|(_, at)| *at)
        } else {
            None
        };
        let at = expiry.map(|d| now + d).or(kept);
        self.keys
            .insert(key.to_vec(), (Data::Text(rest[0].clone()), at));
        Value::Okay
    }

    /// The live value at `key`, or `fresh` put there when there is none.
    fn live_or(&mut self, key: &[u8], now: Duration, fresh: Data) -> &mut Data {
        if self.live(key, now).is_none() {
            self.keys.insert(key.to_vec(), (fresh, None));
        }
        &mut self.keys.get_mut(key).expect("just put").0
    }

    fn sadd(&mut self, key: &[u8], members: &[Vec<u8>], now: Duration) -> Value {
        let Data::Set(set) = self.live_or(key, now, Data::Set(BTreeSet::new())) else {
            return wrong_type();
        };
        int(members.iter().filter(|m| set.insert((*m).clone())).count())
    }

    fn zadd(&mut self, key: &[u8], rest: &[Vec<u8>], now: Duration) -> Value {
        let Data::Sorted(scores) = self.live_or(key, now, Data::Sorted(BTreeMap::new())) else {
            return wrong_type();
        };
        let mut added = 0;
        for pair in rest.chunks(2) {
            let Some(score) = number::<f64>(&pair[0]) else {
                return error("ERR value is not a valid float");
            };
            added += usize::from(scores.insert(pair[1].clone(), score).is_none());
        }
        int(added)
    }

    fn by_score(&mut self, name: &[u8], key: &[u8], rest: &[Vec<u8>], now: Duration) -> Value {
        let (Some(min), Some(max)) = (bound(&rest[0]), bound(&rest[1])) else {
            return error("ERR min or max is not a float");
        };
        let remove = name == b"ZREMRANGEBYSCORE";
        let scores = match self.live(key, now) {
            None if remove => return Value::Int(0),
            None => return Value::Array(Vec::new()),
            Some(Data::Sorted(scores)) => scores,
            Some(_) => return wrong_type(),
        };
        let mut inside: Vec<(f64, Vec<u8>)> = scores
            .iter()
            .filter(|&(_, &score)| within(score, min, max))
            .map(|(member, &score)| (score, member.clone()))
            .collect();
        if remove {
            for (_, member) in &inside {
                scores.remove(member);
            }
            return int(inside.len());
        }
        inside.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        Value::Array(
            inside
                .into_iter()
                .map(|(_, m)| Value::BulkString(m))
                .collect(),
        )
    }

    /// The one script verve sends (`PUBLISH_LARGER`), run natively; any other is refused.
    fn eval(&mut self, rest: &[Vec<u8>], now: Duration) -> Value {
        if rest[0] != PUBLISH_LARGER.as_bytes() || rest.get(1).map(Vec::as_slice) != Some(b"1") {
            return error("ERR the simulated server runs only PUBLISH_LARGER");
        }
        let (key, count) = (&rest[2], &rest[3]);
        let published = match self.live(key, now) {
            None => return Value::Int(-1),
            Some(Data::Text(text)) => text.clone(),
            Some(_) => return wrong_type(),
        };
        let Some(published) = number::<i64>(&published) else {
            return Value::Int(-2);
        };
        if number::<i64>(count).is_some_and(|count| count > published) {
            let at = self.keys.get(key.as_slice()).and_then(|(_, at)| *at);
            self.keys
                .insert(key.clone(), (Data::Text(count.clone()), at));
        }
        Value::Int(published)
    }
}
