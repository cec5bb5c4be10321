//! HTTP/1.x, without sockets or state: the strict request parser (`request`), the accept
//! query (`query`), routing (`route`) and the answers' wire form (`response`).

pub mod query;
pub mod request;
pub(crate) mod response;
pub mod route;
