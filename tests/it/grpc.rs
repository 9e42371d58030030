//! gRPC: a tonic client calls `examples/grpc` (tonic's helloworld Greeter, its
//! `Routes` served as they are) over h2c.

use std::time::Duration;

use crate::util::*;

#[path = "../../examples/grpc/messages.rs"]
mod messages;

use messages::{HelloReply, HelloRequest, SAY_HELLO};

/// One `SayHello` call with tonic's own client and transport.
async fn say_hello(addr: std::net::SocketAddr, name: &str) -> Result<String, Box<dyn std::error::Error>> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await?;
    let request = tonic::Request::new(HelloRequest { name: name.into() });
    let path = hyper::http::uri::PathAndQuery::from_static(SAY_HELLO);
    let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
    let reply = client.unary(request, path, codec).await?;
    Ok(reply.into_inner().message)
}

#[test]
fn a_tonic_client_calls_the_greeter_on_every_worker() {
    let server = Server::start_command(command(example("grpc"), &["--workers", "2"]));
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Fresh connections hash to both workers' sockets: every answer names one of them.
    for n in 0..6 {
        let message = runtime
            .block_on(say_hello(server.addr, &format!("client {n}")))
            .expect("the call succeeds");
        let pid = message
            .strip_prefix(&format!("Hello client {n} from worker "))
            .and_then(|pid| pid.parse::<i32>().ok())
            .unwrap_or_else(|| panic!("not the Greeter's reply: {message:?}"));
        assert!(
            workers.iter().any(|w| w.as_raw() == pid),
            "{pid} is not a worker of {workers:?}"
        );
    }
}
