//! What a worker can serve: any hyper service over `Request<Incoming>` that can be
//! cloned per connection. Written once here instead of as a bound list on every
//! function between `run_with` and the connection.

use std::future::Future;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};

/// Errors a service or its body may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A hyper service a worker can serve. Implemented for every
/// `hyper::service::Service<Request<Incoming>, Response = Response<B>>` that is
/// `Clone + 'static` with a `'static` body; there is nothing to implement by hand.
/// Nothing needs to be `Send`: each worker runs one thread.
pub trait WorkerService: Clone + 'static {
    type Body: Body<Error: Into<BoxError>> + 'static;
    type Error: Into<BoxError>;
    type Future: Future<Output = Result<Response<Self::Body>, Self::Error>> + 'static;

    fn call(&self, request: Request<Incoming>) -> Self::Future;
}

impl<S, B> WorkerService for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    B: Body<Error: Into<BoxError>> + 'static,
{
    type Body = B;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: Request<Incoming>) -> S::Future {
        hyper::service::Service::call(self, request)
    }
}
