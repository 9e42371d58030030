//! The default app: any GET or HEAD answers `200 Hello from worker <pid>\n`;
//! other methods get `405`. A request body is read and discarded (up to 1 MiB,
//! nginx's default `client_max_body_size`) before the answer, so the connection
//! stays open for the next request; a larger one is left unread, and the
//! connection closes after the answer.
//!
//! It is an ordinary service made by a factory, exactly as a user's would be (see
//! `prefork_server::run_with`); nothing in the server knows about it.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::service::Service;
use hyper::{Method, Request, Response, StatusCode};

use crate::body::RequestBody;

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

/// The most of a request body the app reads to keep the connection: 1 MiB.
const DISCARD_LIMIT: usize = 1 << 20;

impl Service<Request<RequestBody>> for Hello {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<RequestBody>) -> Self::Future {
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
        if request.body().is_end_stream() {
            return Answer::Now(ready(Ok(response)));
        }
        Answer::AfterBody(Box::pin(async move {
            if !discard(request.into_body(), DISCARD_LIMIT).await {
                // hyper will not read the rest: say the connection ends here.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        }))
    }
}

/// Reads and drops `body`, up to `limit` bytes; true if it ended within them.
async fn discard(mut body: RequestBody, limit: usize) -> bool {
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        read += frame.data_ref().map_or(0, Bytes::len);
        if read > limit {
            return false;
        }
    }
    true
}

/// The app's response future: ready at once for a request without a body (no
/// allocation on that path), after reading the body otherwise.
pub enum Answer {
    /// A request without a body: answered at once.
    Now(Ready<Answered>),
    /// A request with a body: answered once it is read.
    AfterBody(Pin<Box<dyn Future<Output = Answered>>>),
}

/// What [`Hello`] answers: it never fails.
pub type Answered = Result<Response<Full<Bytes>>, Infallible>;

impl Future for Answer {
    type Output = Answered;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin (`Ready` of an Unpin value, and a box).
        match self.get_mut() {
            Answer::Now(now) => Pin::new(now).poll(cx),
            Answer::AfterBody(later) => later.as_mut().poll(cx),
        }
    }
}
