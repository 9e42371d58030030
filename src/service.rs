//! What a worker can serve: a hyper service or a tower service over
//! `Request<Incoming>` that can be cloned per connection. Written once here
//! instead of as a bound list on every function between `run_with` and the
//! connection.
//!
//! Both kinds are taken as they are, with no adapter in user code: a
//! `hyper::service::service_fn`, an axum `Router`, tonic's `Routes`, a tower-http
//! stack. [`IntoWorkerService`] tells them apart by a marker type the compiler
//! infers ([`Hyper`] or [`Tower`]), the way axum tells handler signatures apart.

use std::future::Future;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::service::TowerToHyperService;

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

/// What the per-worker setup of [`run_with`](crate::run_with) may return: a
/// hyper service (marker [`Hyper`]) or a tower service (marker [`Tower`]). The
/// marker is inferred; a type that is both a hyper and a tower service must be
/// wrapped by hand (`hyper_util::service::TowerToHyperService`).
pub trait IntoWorkerService<Marker> {
    type Service: WorkerService;

    fn into_worker_service(self) -> Self::Service;
}

/// Marks a hyper service (`hyper::service::Service`, such as `service_fn`).
#[derive(Debug)]
pub enum Hyper {}

/// Marks a tower service (`tower::Service`, such as an axum `Router` or tonic's
/// `Routes`): each request is served by a clone, readied then called.
#[derive(Debug)]
pub enum Tower {}

impl<S: WorkerService> IntoWorkerService<Hyper> for S {
    type Service = S;

    fn into_worker_service(self) -> S {
        self
    }
}

impl<S, B> IntoWorkerService<Tower> for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + 'static,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    B: Body<Error: Into<BoxError>> + 'static,
{
    type Service = TowerToHyperService<S>;

    fn into_worker_service(self) -> TowerToHyperService<S> {
        TowerToHyperService::new(self)
    }
}
