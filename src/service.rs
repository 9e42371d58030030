//! What a worker can serve: a hyper service or a tower service over
//! `Request<RequestBody>` that can be cloned per connection. Written once here
//! instead of as a bound list on every function between `run_with` and the
//! connection.
//!
//! Both kinds are taken as they are, with no adapter in user code: a
//! `hyper::service::service_fn`, an axum `Router`, tonic's `Routes`, a tower-http
//! stack. So is a tower *make service* that takes the client's address, such as
//! axum's `Router::into_make_service_with_connect_info::<SocketAddr>()` (its
//! `ConnectInfo` extractor then works). [`IntoWorkerService`] tells them apart by
//! a marker type the compiler infers ([`Hyper`], [`Tower`] or [`MakeTower`]),
//! the way axum tells handler signatures apart.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use hyper::body::Body;
use hyper::{Request, Response};
use hyper_util::service::TowerToHyperService;

use crate::body::RequestBody;

/// Errors a service or its body may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A hyper service a worker can serve. Implemented for every
/// `hyper::service::Service<Request<RequestBody>, Response = Response<B>>` that is
/// `Clone + 'static` with a `'static` body; there is nothing to implement by hand.
/// Nothing needs to be `Send`: each worker runs one thread.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be served by a worker",
    note = "a hyper service must take `Request<prefork_server::RequestBody>` (not `Request<Incoming>`), be `Clone + 'static`, and answer `Response<B>` with a `'static` body"
)]
pub trait WorkerService: Clone + 'static {
    /// The responses' body.
    type Body: Body<Error: Into<BoxError>> + 'static;
    /// What the service fails with (hyper closes the connection).
    type Error: Into<BoxError>;
    /// The answer to one request.
    type Future: Future<Output = Result<Response<Self::Body>, Self::Error>> + 'static;

    /// Answers `request`.
    fn call(&self, request: Request<RequestBody>) -> Self::Future;
}

impl<S, B> WorkerService for S
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>> + Clone + 'static,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    B: Body<Error: Into<BoxError>> + 'static,
{
    type Body = B;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: Request<RequestBody>) -> S::Future {
        hyper::service::Service::call(self, request)
    }
}

/// A tower service a worker can serve, its bounds written once: cloned per
/// request, `'static`, errors and body errors that box.
pub trait TowerServable:
    tower_service::Service<
        Request<RequestBody>,
        Response = Response<Self::ResponseBody>,
        Future: 'static,
        Error: Into<BoxError>,
    > + Clone
    + 'static
{
    /// The responses' body.
    type ResponseBody: Body<Error: Into<BoxError>> + 'static;
}

impl<S, B> TowerServable for S
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>> + Clone + 'static,
    S::Future: 'static,
    S::Error: Into<BoxError>,
    B: Body<Error: Into<BoxError>> + 'static,
{
    type ResponseBody = B;
}

/// A tower make service a worker can serve, its bounds written once: called
/// with a connection's client address, it makes a [`TowerServable`].
pub trait TowerMakeService:
    tower_service::Service<SocketAddr, Response: TowerServable, Future: 'static, Error: Into<BoxError>> + Clone + 'static
{
}

impl<M> TowerMakeService for M where
    M: tower_service::Service<SocketAddr, Response: TowerServable, Future: 'static, Error: Into<BoxError>>
        + Clone
        + 'static
{
}

/// What a worker holds: the service for each connection it accepts.
pub trait WorkerApp: 'static {
    /// The service each connection gets.
    type Service: WorkerService;

    /// The service for a connection from `client`, accepted on `stream`.
    fn connection(&self, stream: &tokio::net::TcpStream, client: SocketAddr) -> Made<Self::Service>;
}

/// A connection's service: at once (a clone, for most apps), or once a make
/// service has made it.
pub enum Made<S> {
    /// The service, now.
    Ready(S),
    /// The service once this future has made it (a make service's answer);
    /// an error closes the connection.
    Later(Pin<Box<dyn Future<Output = Result<S, BoxError>>>>),
}

impl<S: WorkerService> WorkerApp for S {
    type Service = S;

    fn connection(&self, _stream: &tokio::net::TcpStream, _client: SocketAddr) -> Made<S> {
        Made::Ready(self.clone())
    }
}

/// A tower make service, called with each connection's client address (what
/// [`IntoWorkerService`] makes of one).
pub struct MakeApp<M>(M);

impl<M: TowerMakeService> WorkerApp for MakeApp<M> {
    type Service = TowerToHyperService<M::Response>;

    fn connection(&self, _stream: &tokio::net::TcpStream, client: SocketAddr) -> Made<Self::Service> {
        let mut make = self.0.clone();
        Made::Later(Box::pin(async move {
            std::future::poll_fn(|cx| make.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let service = make.call(client).await.map_err(Into::into)?;
            Ok(TowerToHyperService::new(service))
        }))
    }
}

/// A connection's addresses, for a service made per connection (see [`per_connection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client's address.
    pub client: SocketAddr,
    /// The address the client connected to (of this machine).
    pub local: SocketAddr,
}

/// A hyper service made for each connection by `make`, which is given the
/// connection's [`Addresses`]: how a hyper service learns who it serves.
///
/// ```no_run
/// # use std::convert::Infallible;
/// # use hyper::{Request, Response};
/// # use prefork_server::RequestBody;
/// # use http_body_util::Full;
/// # use bytes::Bytes;
/// let config = prefork_server::Config::from_args();
/// prefork_server::run_with(config, || {
///     Ok::<_, Infallible>(prefork_server::per_connection(|addresses: prefork_server::Addresses| {
///         hyper::service::service_fn(move |_request: Request<RequestBody>| async move {
///             let text = format!("you are {}\n", addresses.client);
///             Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
///         })
///     }))
/// })
/// # ;
/// ```
pub fn per_connection<F, S>(make: F) -> PerConnection<F>
where
    F: Fn(Addresses) -> S + 'static,
    S: WorkerService,
{
    PerConnection(make)
}

/// See [`per_connection`].
pub struct PerConnection<F>(F);

impl<F, S> WorkerApp for PerConnection<F>
where
    F: Fn(Addresses) -> S + 'static,
    S: WorkerService,
{
    type Service = S;

    fn connection(&self, stream: &tokio::net::TcpStream, client: SocketAddr) -> Made<S> {
        // One getsockname(2), paid only by the apps that ask for it. It does not
        // fail on an accepted socket; if it did, the port says "unknown".
        let unknown = || SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0);
        let local = stream.local_addr().unwrap_or_else(|_| unknown());
        Made::Ready((self.0)(Addresses { client, local }))
    }
}

impl<F, S> IntoWorkerService<Hyper> for PerConnection<F>
where
    F: Fn(Addresses) -> S + 'static,
    S: WorkerService,
{
    type Service = PerConnection<F>;

    fn into_worker_service(self) -> PerConnection<F> {
        self
    }
}

/// What the per-worker setup of [`run_with`](crate::run_with) may return: a
/// hyper service (marker [`Hyper`]), a tower service (marker [`Tower`]), or a
/// tower make service over the client's address (marker [`MakeTower`]). The
/// marker is inferred; a type that is several of these must be wrapped by hand
/// (`hyper_util::service::TowerToHyperService`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a service a worker can serve",
    note = "a worker serves a hyper or tower service over `Request<prefork_server::RequestBody>` (not `Request<Incoming>`), such as an axum `Router`, tonic's `Routes` or a `service_fn`; or a tower make service over the client's `SocketAddr`"
)]
pub trait IntoWorkerService<Marker> {
    /// What the worker holds.
    type Service: WorkerApp;

    /// Into what the worker holds.
    fn into_worker_service(self) -> Self::Service;
}

/// Marks a hyper service (`hyper::service::Service`, such as `service_fn`).
#[derive(Debug)]
pub enum Hyper {}

/// Marks a tower service (`tower::Service`, such as an axum `Router` or tonic's
/// `Routes`): each request is served by a clone, readied then called.
#[derive(Debug)]
pub enum Tower {}

/// Marks a tower make service (`tower::Service<SocketAddr>`, such as axum's
/// `into_make_service_with_connect_info::<SocketAddr>()`): called once per
/// connection with the client's address, it makes that connection's service.
#[derive(Debug)]
pub enum MakeTower {}

impl<S: WorkerService> IntoWorkerService<Hyper> for S {
    type Service = S;

    fn into_worker_service(self) -> S {
        self
    }
}

impl<S: TowerServable> IntoWorkerService<Tower> for S {
    type Service = TowerToHyperService<S>;

    fn into_worker_service(self) -> TowerToHyperService<S> {
        TowerToHyperService::new(self)
    }
}

impl<M: TowerMakeService> IntoWorkerService<MakeTower> for M {
    type Service = MakeApp<M>;

    fn into_worker_service(self) -> MakeApp<M> {
        MakeApp(self)
    }
}
