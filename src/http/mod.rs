//! HTTP/1.x: request parsing, the accept query, answers, per-request handling and the
//! connection loop.

pub mod connection;
pub mod handler;
pub mod query;
pub mod request;
pub mod response;
pub mod route;
