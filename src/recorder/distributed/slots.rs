//! A Redis Cluster's slot map as verve reads it: `CLUSTER SLOTS`, and where MOVED and ASK
//! replies send a command.

use std::collections::BTreeMap;

use redis::{ErrorKind, RedisError, Value};

/// Where a command is sent in a round.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Target {
    /// The owner of the slot in the current map.
    Owner,
    Moved(String),
    /// `ASKING` first, for a slot being migrated.
    Ask(String),
}

/// The masters of a slot map, each once.
pub(super) fn masters_of(slots: &BTreeMap<u16, (u16, String)>) -> Vec<String> {
    let mut masters: Vec<String> = slots.values().map(|(_, node)| node.clone()).collect();
    masters.sort();
    masters.dedup();
    masters
}

/// A slot of each master of a slot map, in the order of their addresses: a command about no
/// key reaches every master by these.
pub(super) fn a_slot_of_each(slots: &BTreeMap<u16, (u16, String)>) -> Vec<u16> {
    masters_of(slots)
        .iter()
        .filter_map(|master| served_by(slots, master).first().map(|&(first, _)| first))
        .collect()
}

/// The slot ranges `node` serves in a slot map.
pub(super) fn served_by(slots: &BTreeMap<u16, (u16, String)>, node: &str) -> Vec<(u16, u16)> {
    slots
        .iter()
        .filter(|(_, (_, master))| master == node)
        .map(|(&first, &(last, _))| (first, last))
        .collect()
}

/// Where a MOVED or ASK reply sends its command.
pub(super) fn redirect(value: &Value) -> Option<Target> {
    let Value::ServerError(e) = value else {
        return None;
    };
    let node = || {
        e.details()?
            .split_ascii_whitespace()
            .nth(1)
            .map(str::to_owned)
    };
    match e.code() {
        "MOVED" => node().map(Target::Moved),
        "ASK" => node().map(Target::Ask),
        _ => None,
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`. An empty host
/// means the node that answered.
pub(super) fn parse_slots(
    value: &Value,
    asked: &str,
) -> Result<BTreeMap<u16, (u16, String)>, RedisError> {
    let bad = || {
        RedisError::from((
            ErrorKind::ParseError,
            "redis cluster: bad CLUSTER SLOTS reply",
        ))
    };
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let Value::Array(ranges) = value else {
        return Err(bad());
    };
    let mut map = BTreeMap::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad());
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad());
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(bad()),
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return Err(bad());
        };
        let host = if host.is_empty() || host == "?" {
            asked_host.to_owned()
        } else {
            host
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
            return Err(bad());
        };
        map.insert(start, (end, format!("{host}:{port}")));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_slot_map_is_read_from_cluster_slots() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7001), bulk("id1")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(7004), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7002), bulk("id2")]),
            ]),
        ]);
        let map = parse_slots(&reply, "10.0.0.9:7002").unwrap();
        assert_eq!(map[&0], (5460, "127.0.0.1:7001".to_owned()));
        assert_eq!(map[&5461], (16383, "10.0.0.9:7002".to_owned()));
        assert!(parse_slots(&Value::Int(1), "x:1").is_err());
    }

    #[test]
    fn moved_and_ask_name_their_node() {
        let reply = |resp: &[u8]| redis::parse_redis_value(resp).unwrap();
        assert_eq!(
            redirect(&reply(b"-MOVED 3999 127.0.0.1:7002\r\n")),
            Some(Target::Moved("127.0.0.1:7002".into()))
        );
        assert_eq!(
            redirect(&reply(b"-ASK 3999 127.0.0.1:7003\r\n")),
            Some(Target::Ask("127.0.0.1:7003".into()))
        );
        assert_eq!(redirect(&reply(b"-ERR wrong\r\n")), None);
        assert_eq!(redirect(&Value::Okay), None);
    }
}
