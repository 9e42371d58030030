//! gRPC under prefork-server: tonic's helloworld `Greeter`, its `Routes` served
//! as they are, over HTTP/2 with prior knowledge (h2c), or over TLS with the
//! server's flags.
//!
//! ```text
//! cargo run --release --example grpc -- --port 50051
//! grpcurl -plaintext -d '{"name":"you"}' localhost:50051 helloworld.Greeter/SayHello
//! # {"message": "Hello you from worker <pid>"}
//!
//! sh scripts/make-certs.sh certs
//! cargo run --release --example grpc -- --port 50051 \
//!     --tls-cert certs/server.pem --tls-key certs/server.key --tls-client-ca certs/ca.pem
//! grpcurl -cacert certs/ca.pem -cert certs/client.pem -key certs/client.key \
//!     -d '{"name":"you"}' localhost:50051 helloworld.Greeter/SayHello
//! # {"message": "Hello you from worker <pid> (client certificate verified)"}
//! ```
//!
//! `GreeterServer` below is what `tonic-build` generates for `helloworld.proto`,
//! cut to its one method and written by hand with the messages in
//! `messages.rs`, so the example builds without `protoc`.

mod messages;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use messages::{HelloReply, HelloRequest, SAY_HELLO};
use tonic::body::Body;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

fn main() -> std::process::ExitCode {
    let config = prefork_server::Config::from_args();
    let routes = || Ok::<_, Infallible>(tonic::service::Routes::new(GreeterServer));
    match prefork_server::run_with(config, routes) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("grpc: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `helloworld.Greeter` service.
#[derive(Clone, Copy, Debug)]
struct GreeterServer;

impl NamedService for GreeterServer {
    const NAME: &'static str = "helloworld.Greeter";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl tower_service::Service<hyper::http::Request<Body>> for GreeterServer {
    type Response = hyper::http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::http::Request<Body>) -> Self::Future {
        if request.uri().path() != SAY_HELLO {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(SayHello, request).await)
        })
    }
}

/// `rpc SayHello (HelloRequest) returns (HelloReply)`.
struct SayHello;

impl UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = Pin<Box<dyn Future<Output = Result<Response<HelloReply>, Status>> + Send>>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        // Over TLS with --tls-client-ca, the client's verified certificate
        // chain is in the request's extensions, as tonic hands them on.
        let verified = (request.extensions().get::<prefork_server::TlsInfo>())
            .and_then(prefork_server::TlsInfo::client_certificates)
            .is_some_and(|chain| !chain.is_empty());
        let name = request.into_inner().name;
        let mut message = format!("Hello {name} from worker {}", std::process::id());
        if verified {
            message.push_str(" (client certificate verified)");
        }
        Box::pin(async move { Ok(Response::new(HelloReply { message })) })
    }
}
