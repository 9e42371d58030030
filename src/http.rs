//! The default app: any GET or HEAD answers `200 Hello from worker <pid>\n`.
//!
//! It is an ordinary service made by a factory, exactly as a user's would be (see
//! `prefork_server::run_with`); nothing in the server knows about it.

use std::convert::Infallible;
use std::future::{ready, Ready};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};

/// The hello service of one worker.
#[derive(Debug, Clone)]
pub struct Hello {
    /// Made once per worker: the pid does not change for the worker's life.
    body: Bytes,
}

impl Hello {
    /// Makes the service in a worker (after the fork, so the pid is the worker's).
    pub fn new() -> Result<Hello, Infallible> {
        Ok(Hello {
            body: Bytes::from(format!("Hello from worker {}\n", std::process::id())),
        })
    }
}

impl Service<Request<Incoming>> for Hello {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut response = Response::new(Full::new(self.body.clone()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        // hyper writes no body for HEAD, and keeps the Content-Length.
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        ready(Ok(response))
    }
}
