//! What a request asked for and how it was answered, named once for the codec (`http`), the
//! workers and the metrics, which count requests by both.

/// The routes of the HTTP surface; every other path is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/api/verve/accept`: count an id.
    Accept,
    /// `/healthz`: the process answers.
    Healthz,
    /// `/readyz`: the process and what it depends on answer.
    Readyz,
    /// `/metrics`: the Prometheus exposition.
    Metrics,
    /// No known route (also requests refused before they could be routed).
    Other,
}

impl Route {
    /// Every route, in declaration order: a route's discriminant is its index.
    pub const ALL: [Route; 5] = [
        Route::Accept,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Other,
    ];

    /// The route of a path (without its query).
    pub fn of(path: &[u8]) -> Route {
        match path {
            b"/api/verve/accept" => Route::Accept,
            b"/healthz" => Route::Healthz,
            b"/readyz" => Route::Readyz,
            b"/metrics" => Route::Metrics,
            _ => Route::Other,
        }
    }

    /// The `route` label of `verve_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Route::Accept => "accept",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Other => "other",
        }
    }
}

/// The statuses verve answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `200`.
    Ok,
    /// `400`: a malformed request or accept query.
    BadRequest,
    /// `404`: no such route.
    NotFound,
    /// `405`: a method other than GET or HEAD.
    MethodNotAllowed,
    /// `413`: a request with a body.
    PayloadTooLarge,
    /// `414`: a request target over the limit.
    UriTooLong,
    /// `431`: a request head over the limit.
    HeadersTooLarge,
    /// `503`: draining, a full queue, or a full window.
    ServiceUnavailable,
}

impl Status {
    /// Every status, in declaration order: a status's discriminant is its index.
    pub const ALL: [Status; 8] = [
        Status::Ok,
        Status::BadRequest,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::PayloadTooLarge,
        Status::UriTooLong,
        Status::HeadersTooLarge,
        Status::ServiceUnavailable,
    ];

    /// The numeric status code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::PayloadTooLarge => 413,
            Status::UriTooLong => 414,
            Status::HeadersTooLarge => 431,
            Status::ServiceUnavailable => 503,
        }
    }

    /// The body for this status when the route has none of its own.
    pub fn default_body(self) -> &'static [u8] {
        match self {
            Status::Ok => b"ok",
            Status::BadRequest | Status::ServiceUnavailable => b"failed",
            Status::NotFound => b"not found",
            Status::MethodNotAllowed => b"method not allowed",
            Status::PayloadTooLarge => b"request too large",
            Status::UriTooLong => b"uri too long",
            Status::HeadersTooLarge => b"request head too large",
        }
    }
}
